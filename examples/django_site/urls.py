from django.urls import path

from . import views

urlpatterns = [
    path("reports", views.reports),
    path("sync-reports", views.sync_reports),
    path("decorated-report", views.decorated_report),
    path("drf-reports", views.drf_reports),
    path("form", views.form),
    path("form-report", views.form_report),
    path("hello", views.hello),
]
