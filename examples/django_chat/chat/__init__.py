"""The example chat app: one model (``Message``) and one view (``post_turn``)."""

__all__: list[str] = []
