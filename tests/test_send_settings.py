"""The fast path's settings follow the app's configuration however it is changed at run time."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_batching.client.send_settings import FAST_CLIENT_SETTING, send_settings


@pytest.fixture
def app():
    return Celery("send_settings_test", broker="redis://127.0.0.1:1/0", set_as_current=False)


def test_defaults_are_celerys(app):
    settings = send_settings(app)
    assert (settings.fast_client, settings.default_priority, settings.compression, settings.send_sent_event) == (
        True,
        None,
        None,
        False,
    )


def test_a_setting_changed_through_app_conf_is_read_again(app):
    assert send_settings(app).send_sent_event is False
    app.conf.task_send_sent_event = True
    assert send_settings(app).send_sent_event is True
    app.conf.update(task_compression="zlib", task_default_priority=5)
    assert (send_settings(app).compression, send_settings(app).default_priority) == ("zlib", 5)
    app.conf[FAST_CLIENT_SETTING] = False
    assert send_settings(app).fast_client is False


def test_old_setting_names_are_read_as_celery_reads_them(app):
    assert send_settings(app).send_sent_event is False
    app.conf.CELERY_SEND_TASK_SENT_EVENT = True  # the pre-4.0 name of task_send_sent_event
    assert app.conf.task_send_sent_event is True
    assert send_settings(app).send_sent_event is True


def test_a_new_configuration_object_is_read_again(app):
    assert send_settings(app).compression is None

    class Config:
        task_compression = "gzip"

    app.config_from_object(Config, force=True)
    assert send_settings(app).compression == "gzip"
