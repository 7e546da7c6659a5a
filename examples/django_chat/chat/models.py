"""The app's own table: the assistant messages, written in the turn's transaction."""

import uuid

from django.db import models

__all__ = ["Message"]


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    chat_id = models.UUIDField()
    turn_id = models.UUIDField(unique=True)
    text = models.TextField()

    class Meta:
        app_label = "chat"
