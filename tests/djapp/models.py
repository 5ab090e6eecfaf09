"""Test models: a profile table on PostgreSQL and the same on SQLite (unique per run)."""

import os

from django.db import models

RUN = os.environ.get("WT_DJANGO_RUN", "x")


class Profile(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.TextField()
    balance = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    version = models.BigIntegerField(default=0)  # kept by the database's triggers

    class Meta:
        app_label = "djapp"
        db_table = f"wtdj_profile_{RUN}"


class LiteProfile(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.TextField()
    balance = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    version = models.BigIntegerField(default=0)

    class Meta:
        app_label = "djapp"
        db_table = "wtdj_liteprofile"
