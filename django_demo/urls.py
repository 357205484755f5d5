"""URL map of the demo site."""

from django.urls import path

from django_demo.inference import views

# Errors Django answers itself are JSON too, as every answer of the API.
handler400 = views.bad_request
handler403 = views.forbidden
handler404 = views.not_found
handler500 = views.server_error

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("api/embed", views.embed, name="embed"),
    path("api/similarity", views.similarity, name="similarity"),
    path("api/fill-mask", views.fill_mask, name="fill-mask"),
    path("api/async/embed", views.embed_async, name="embed-async"),
    path("api/async/similarity", views.similarity_async, name="similarity-async"),
    path("api/async/fill-mask", views.fill_mask_async, name="fill-mask-async"),
    path("api/naive/embed", views.naive_embed, name="naive-embed"),
]
