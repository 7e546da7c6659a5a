"""The example's one route."""

from chat.views import post_turn
from django.urls import path

__all__ = ["urlpatterns"]

urlpatterns = [path("chats/<uuid:chat_id>/turns/<uuid:request_id>", post_turn)]
