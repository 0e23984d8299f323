"""Fair and safe serving: who may queue a request, which files a request may name, what an error
may show and log, and who may log in. Plain Python, testable without a server; ``install``
puts the admission rules in front of a Gradio Blocks' queue.

Why at the queue's door: Gradio queues every event first and runs the function later, so a
limit checked inside the function comes after the wait it was meant to prevent (12 uploads
from one page made another user's example wait 39 s). ``install`` wraps the queue's ``push``
(the one place every queued route, ``/queue/join`` and ``/call/<api>``, enters), refuses at
once what breaks a rule, and places what it admits fairly: before the waiting requests of
pages that already have more in flight.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger("ddetr.app")

MODEL_QUEUE = "model"  # the concurrency_id of every event that runs the model
# Handlers of model events running at once. A page may hold only one (Limits), so with two a
# page flooding uploads never holds every slot: another page's run starts at once. The forward
# passes themselves still take turns (the model's lock); decoding, capture bookkeeping and
# drawing of the two overlap.
MODEL_SLOTS = 2


# ----------------------------------------------------------------------------- admission
@dataclass(frozen=True)
class Limits:
    """How much one page (session) and one network address may have queued or running."""
    # A page's next image waits for its previous one: refused at once with a message instead
    # of queueing behind it, so one page never holds more than one of the MODEL_SLOTS.
    model_runs_per_session: int = 1
    # Many pages from one address (a class behind one NAT, or a script opening sessions):
    # this only bounds the queue; fair placement keeps other addresses' waits short whatever
    # it is, so it can be generous (90 pages of one address picking an example at once fit).
    model_runs_per_address: int = 128
    # Any event (view changes, tabs): a page normally has one or two in flight.
    events_per_session: int = 8
    # Gradio's own bound on all queued events (a queued event is a few KB; the upload itself
    # is already on disk). Gradio's default is unbounded; the page used to set 64, which
    # refused 25 of 90 simultaneous requests ("Queue is full").
    queue_size: int = 1024


@dataclass(frozen=True)
class Request:
    """One queued or running event, as admission sees it."""
    session: str
    address: str
    model: bool  # runs the model (concurrency_id == MODEL_QUEUE)


def refusal(limits: Limits, new: Request, in_flight: list[Request]) -> str | None:
    """Why ``new`` may not join the queue now (a message for the user), or None to admit it."""
    mine = [r for r in in_flight if r.session == new.session]
    if new.model:
        runs = sum(r.model for r in mine)
        if runs >= limits.model_runs_per_session:
            return ("Your previous image is still being processed; wait for it to finish, "
                    "then try again.")
        near = sum(r.model for r in in_flight if r.address == new.address)
        if near >= limits.model_runs_per_address:
            return (f"This server is already running {near} images from your network address; wait for "
                    "them to finish, then try again.")
    if len(mine) >= limits.events_per_session:
        return (f"This page has {len(mine)} requests waiting; wait for them to finish "
                "(or reload the page), then try again.")
    return None


def fair_position(new: Request, running: list[Request], waiting: list[Request]) -> int:
    """Where ``new`` goes in ``waiting`` (one concurrency group, served from index 0).

    Rank of a request = (requests of its session ahead of it, requests of its address ahead
    of it), counting the running ones. ``new`` goes before the first waiting request of a
    higher rank, so a page's second request waits behind every page's first one, and an
    address with many pages behind every other address's first request: round robin,
    without reordering anything already placed among equals.
    """
    ahead_s = Counter(r.session for r in running)
    ahead_a = Counter(r.address for r in running)
    sessions, addresses = Counter(ahead_s), Counter(ahead_a)
    for r in waiting:
        sessions[r.session] += 1
        addresses[r.address] += 1
    mine = (sessions[new.session], addresses[new.address])
    for i, r in enumerate(waiting):
        if (ahead_s[r.session], ahead_a[r.address]) > mine:
            return i
        ahead_s[r.session] += 1
        ahead_a[r.address] += 1
    return len(waiting)


# ----------------------------------------------------------------------------- files
NOT_UPLOADED = ("this endpoint takes only images uploaded through the page (POST the file to "
                "/gradio_api/upload first); it never fetches a URL or opens a server path")


def _inside(path: str, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _own_file_url(url: str, path: str) -> bool:
    """Gradio's browser client sends an upload as {path, url: <this server>/gradio_api/file=<path>}."""
    return unquote(urlparse(url).path).endswith("/file=" + path)


def file_refusal(data, upload_folder: str | Path) -> str | None:
    """Why a request's inputs may not be processed, or None: every file object in ``data`` (a
    dict with a ``path`` or ``url``) must name a file inside ``upload_folder``, and its ``url``,
    if any, must be this server's own link to that file. Gradio would otherwise download a
    ``path`` that is a URL before any handler runs (``processing_utils.async_move_files_to_cache``)."""
    folder = Path(upload_folder)
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            if "path" in x or "url" in x:
                path, url = x.get("path"), x.get("url")
                if not isinstance(path, str) or "://" in path or not _inside(path, folder):
                    return NOT_UPLOADED
                if url is not None and not (isinstance(url, str) and _own_file_url(url, path)):
                    return NOT_UPLOADED
            else:
                stack.extend(x.values())
    return None


# ----------------------------------------------------------------------------- the hook
def validation_messages(fn, why: str) -> list[dict]:
    """A refusal in the shape of Gradio's validators (``gr.validate``): HTTP 422, and the page
    shows ``why`` on the event's first visible input and leaves every output as it was (an
    ordinary error would mark the outputs failed and raise a toast)."""
    from gradio.components import State

    shown = next((i for i, block in enumerate(fn.inputs) if not isinstance(block, State)), 0)
    names = list(getattr(fn, "input_parameter_names", None) or [])
    return [{"__type__": "validate", "is_valid": i != shown, "message": why if i == shown else "",
             "parameter_name": (names[i] if i < len(names) else None) or f"parameter_{i}"}
            for i in range(max(1, len(fn.inputs)))]


def _address(request) -> str:
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "?"


class Admission:
    """The admission rules attached to one Blocks' queue (``install`` makes it)."""

    def __init__(self, queue, limits: Limits, upload_folder: str | Path):
        self.queue, self.limits, self.upload_folder = queue, limits, Path(upload_folder)
        self.admitting: list[Request] = []  # pushes past the check but not yet in Gradio's lists
        self.refused = Counter()  # reason -> count, for the benchmark and the tests

    def _request(self, event) -> Request:
        return Request(event.session_hash, _address(event.request), event.concurrency_id == MODEL_QUEUE)

    def in_flight(self) -> list[Request]:
        q = self.queue
        out = [self._request(e) for eq in q.event_queue_per_concurrency_id.values() for e in eq.queue]
        out += [self._request(e) for job in q.active_jobs if job for e in job]
        return out + self.admitting

    async def push(self, original, body, request, username):
        from gradio import route_utils

        try:
            fn = route_utils.get_fn(self.queue.blocks, None, body)
        except Exception:  # unknown fn_index: Gradio's own push answers it
            return await original(body=body, request=request, username=username)
        # No session hash (``/call/<api>``): Gradio makes the event its own session, so does this.
        new = Request(body.session_hash or uuid.uuid4().hex, _address(request), fn.concurrency_id == MODEL_QUEUE)
        why = file_refusal(body.data, self.upload_folder) or refusal(self.limits, new, self.in_flight())
        if why:
            self.refused[why.split(";")[0].split("(")[0].strip()] += 1
            log.info("refused %s from %s: %s", fn.api_name or fn.name, new.address, why)
            return False, validation_messages(fn, why), "validator_error"
        self.admitting.append(new)
        try:
            ok, event_id, state = await original(body=body, request=request, username=username)
        finally:
            self.admitting.remove(new)
        if ok:
            self._place(fn.concurrency_id, event_id)
        return ok, event_id, state

    def _place(self, concurrency_id: str, event_id: str) -> None:
        q = self.queue.event_queue_per_concurrency_id.get(concurrency_id)
        if q is None or not q.queue or q.queue[-1]._id != event_id:
            return  # already running, or answered from a cache
        event = q.queue.pop()
        running = [self._request(e) for job in self.queue.active_jobs if job for e in job
                   if e.concurrency_id == concurrency_id]
        q.queue.insert(fair_position(self._request(event), running, [self._request(e) for e in q.queue]), event)


def install(demo, limits: Limits | None = None) -> Admission:
    """Put the admission rules in front of ``demo``'s queue (call after ``demo.queue()``, which
    makes a new queue). Returns the ``Admission``, also kept as ``demo.admission``."""
    from gradio.utils import get_upload_folder

    limits = limits or Limits()
    q = demo._queue
    adm = Admission(q, limits, get_upload_folder())
    adm.gradio_push, adm.gradio_max_size = q.push, q.max_size
    q.max_size = limits.queue_size
    q.push = functools.partial(adm.push, q.push)
    demo.admission = adm
    return adm


def uninstall(demo) -> None:
    """Gradio's own queue again (first come, first served; the benchmark's baseline)."""
    adm = demo.admission
    adm.queue.push, adm.queue.max_size = adm.gradio_push, adm.gradio_max_size


# ----------------------------------------------------------------------------- errors
# An absolute path: POSIX (/a/b) or Windows (C:\a, \\server\share), not the tail of a URL or a
# fraction. The page shows file names only (the working directory and the checkpoint's folder
# say nothing a user needs and tell an attacker where things are).
_ABS_PATH = re.compile(r"(?<![\w.:/\\])(?:/(?!/)|[A-Za-z]:[\\/]|\\\\)[^\s'\"`<>|,;()\[\]{}]*")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its file name."""
    def name(m: re.Match) -> str:
        p = m.group(0).rstrip(".:")
        tail = m.group(0)[len(p):]
        base = re.split(r"[\\/]", p.rstrip("\\/"))[-1]
        return (base or "/") + tail
    return _ABS_PATH.sub(name, str(text))


def guarded(fn):
    """Every failure becomes a readable message in the page; the server keeps serving.

    A user's mistake (``ValueError`` -- ``UserError`` is one -- or a lookup of something that
    is not there) is logged as one line; anything else is a bug, logged with its traceback.
    Messages never show a server path. Gradio's own traceback print is turned off
    (``print_exception=False``): the log line here is the record.
    """
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, LookupError) as e:
            msg = scrub_paths(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
            log.info("%s refused: %s", fn.__name__, " ".join(msg.split()))
            raise gr.Error(msg, title="Cannot do that", print_exception=False) from None
        except MemoryError:
            log.warning("%s ran out of memory", fn.__name__)
            raise gr.Error("The server ran out of memory for this request; try a smaller image.",
                           print_exception=False) from None
        except Exception as e:  # a bug: log it, tell the user, keep serving
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(e).__name__}: {scrub_paths(str(e))}). The server keeps "
                           "running; please try again or report it.", title="Internal error",
                           print_exception=False) from None
    return wrapper


# ----------------------------------------------------------------------------- who may connect
class AccountError(ValueError):
    """A malformed --auth value or an unreadable --auth-file."""


def parse_account(value: str, where: str = "--auth") -> tuple[str, str]:
    """``"user:password"`` -> (user, password); the password may itself contain ':'."""
    user, sep, password = str(value).partition(":")
    if not sep or not user.strip() or not password:
        raise AccountError(f"{where}: expected USER:PASSWORD (both non-empty), got {value!r}")
    return user.strip(), password


def read_accounts(path: str | Path) -> list[tuple[str, str]]:
    """The accounts in a file of ``user:password`` lines (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AccountError(f"--auth-file {path}: cannot read it ({type(e).__name__}: "
                           f"{getattr(e, 'strerror', None) or e}); give a readable UTF-8 text file") from None
    accounts = [parse_account(line.strip(), where=f"--auth-file {path}, line {i}")
                for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not accounts:
        raise AccountError(f"--auth-file {path}: no accounts in it; write one `user:password` per line")
    return accounts


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, login: bool) -> str | None:
    """What to tell the operator when the page is reachable from other machines, or None."""
    if is_loopback(host):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    if login:
        return (f"note: serving on {where}; others on the network can reach this page (a login is required). "
                "Gradio serves plain HTTP: put it behind an HTTPS proxy beyond a trusted network.")
    return (f"WARNING: serving on {where} without a login: anyone who can reach this machine can use the "
            "explorer and run the model. Require a login with --auth USER:PASSWORD or --auth-file FILE "
            "(one user:password per line), or bind to 127.0.0.1.")
