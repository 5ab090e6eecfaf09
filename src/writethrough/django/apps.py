"""The Django app: ``INSTALLED_APPS = [..., "writethrough.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class WritethroughConfig(AppConfig):
    name = "writethrough.django"
    label = "writethrough"
    verbose_name = "writethrough"
    default = True

    def ready(self) -> None:
        from . import signals

        signals.connect()
