-- turnstore 0003, partitioned layout: nothing to do. On this layout 0001 creates the
-- tenant keys of the plain layout's 0003 directly (chat_turns_tenant_chat_request_key,
-- chat_turns_one_running_per_tenant_chat, chat_turns_tenant_chat_latest): a
-- hash-partitioned table cannot hold the unique keys without tenant_id that the plain
-- layout's 0001 started with (docs/schema.md, The partitioned layout).
SELECT 1;
