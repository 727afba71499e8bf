"""Views of the Django example: each way a Django view defers, and an ordinary one."""

from __future__ import annotations

import asyncio
import time

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

import repoll


def _pages(request: HttpRequest) -> int | None:
    try:
        pages = int(request.GET.get("pages", ""))
    except ValueError:
        return None
    return pages if 0 < pages <= 1000 else None


def _database_says_hello() -> int:
    with connection.cursor() as cursor:  # the ORM's connection, in the work's thread
        cursor.execute("SELECT 1")
        return int(cursor.fetchone()[0])


@csrf_exempt
async def reports(request: HttpRequest) -> HttpResponse:
    """An async view: validate, then ``await repoll.defer()``."""
    pages = _pages(request)
    if pages is None:
        return JsonResponse({"error": "pages must be a whole number from 1 to 1000"}, status=400)
    await repoll.defer()
    for page in range(pages):
        await asyncio.sleep(0.5)
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return JsonResponse({"pages": pages}, status=201)


@csrf_exempt
def sync_reports(request: HttpRequest) -> HttpResponse:
    """A sync view: validate, then ``repoll.defer_sync()``; the rest runs in its thread."""
    pages = _pages(request)
    if pages is None:
        return JsonResponse({"error": "pages must be a whole number from 1 to 1000"}, status=400)
    operation = repoll.defer_sync()
    for page in range(pages):
        time.sleep(0.5)
        operation.raise_if_canceled()
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return JsonResponse({"pages": pages, "database": _database_says_hello()}, status=201)


@csrf_exempt
@repoll.deferred
def decorated_report(request: HttpRequest) -> HttpResponse:
    """A sync view marked ``@repoll.deferred``: all of it is the work, on the executor's threads."""
    time.sleep(float(request.GET.get("seconds", "0.2")))
    return JsonResponse({"database": _database_says_hello()}, status=201)


class ReportSpec(serializers.Serializer[dict[str, int]]):
    pages = serializers.IntegerField(min_value=1, max_value=1000)


@api_view(["POST"])
def drf_reports(request: Request) -> Response:
    """Django REST framework: the serializer validates, then ``repoll.defer_sync()``."""
    spec = ReportSpec(data=request.data)
    spec.is_valid(raise_exception=True)  # DRF's own 400
    pages = spec.validated_data["pages"]
    operation = repoll.defer_sync()
    for page in range(pages):
        time.sleep(0.5)
        operation.raise_if_canceled()
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return Response({"pages": pages}, status=201)


def form(request: HttpRequest) -> HttpResponse:
    """An HTML form with Django's CSRF token, posting to a deferred view."""
    token = get_token(request)
    return HttpResponse(
        '<form method="post" action="/form-report?pages=2">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        "<button>Make the report</button></form>"
    )


def form_report(request: HttpRequest) -> HttpResponse:
    """The form's target: CSRF-protected like any view, then deferred."""
    pages = _pages(request) or 1
    repoll.defer_sync()
    time.sleep(0.5 * pages)
    return HttpResponse(f"<p>Your report has {pages} pages.</p>")


def hello(request: HttpRequest) -> HttpResponse:
    """An ordinary sync view: passes through."""
    return JsonResponse({"hello": "world"})
