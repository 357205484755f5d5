"""App config: the inference app under its short label."""

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "django_demo.inference"
    label = "inference"
