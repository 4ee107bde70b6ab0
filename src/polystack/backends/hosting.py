"""What a model gets from the server that hosts it besides its inputs: the facts of the request it runs
(``REQUEST``), and the server itself (``HOST``): a way to call the other models served and the server's custom
metrics, as Triton gives its Python models (``request.request_id()``, ``request.parameters()``; business logic
scripting, ``InferenceRequest.exec``; model loading, ``pb_utils.load_model``; ``pb_utils.MetricFamily``).

Both are context variables, so that backends keep their contract (numpy in, numpy out) and know nothing of
servers: the server sets ``HOST`` while it loads a model (the model keeps it) and ``REQUEST`` around the call
that runs a request (``run_as``). Without a server (``polystack predict``, a batch job) there is no host, and
a request's facts are empty.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from polystack.custom_metrics import CustomMetrics
from polystack.errors import PolystackError

T = TypeVar("T")

# The request's parameters that schedule or carry it, which Triton reads itself and never hands a model among its
# ``parameters()`` (``timeout`` it gives as the request's ``timeout()``, a deadline): no answer depends on them, so the
# response cache leaves them out of its key (a client's deadline, different at each call, missed every time)
NOT_FOR_MODELS = frozenset({"priority", "timeout", "binary_data_output"})


@dataclass(frozen=True)
class RequestFacts:
    """The request a model runs, past its inputs: its id, its parameters (Triton's own among them), the outputs
    it asks for (none: all), and, for a request another model sent, the models waiting for its answer."""

    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    # a request a model sent: the model instances waiting for its answer, as ``name:version``, each as often as
    # instances of it wait (the chain of calls that led to it)
    callers: tuple[str, ...] = ()
    # where a decoupled model sends this request's responses (None: the model answers it by returning)
    responses: Responses | None = None
    # set when the client of a request answered once goes away (cancelled, disconnected): the model may stop
    # (``request.is_cancelled()``); a decoupled request's is its ``responses``' (None: it cannot be cancelled)
    gone: threading.Event | None = None
    # an ensemble step's request: the outputs it asks for may be left out (``InferRequest.partial``)
    partial: bool = False
    # the request's trace when it is traced (a ``RequestTrace``): a call it sends with ``trace=request.trace()`` is
    # traced as its child, as Triton's BLS traces it
    trace: Any = None
    # a request a model sent: the parameters the model sees, as given (``InferRequest.model_parameters``); None: its
    # ``parameters`` less those Triton reads itself
    model_parameters: Mapping[str, Any] | None = None


class Responses(Protocol):
    """Where a decoupled model sends one request's responses, from any of its threads, as they come: any number,
    the last of them marked final (Triton's ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``)."""

    def send(self, outputs: dict[str, np.ndarray] | PolystackError | None, final: bool) -> None:
        """One response: its outputs, or the error it carries; None with ``final``: the final flag alone. Raises
        ``Unavailable`` once the final one was sent."""
        ...

    @property
    def cancelled(self) -> bool:
        """Whether the client went away (or cancelled the request): what the model sends is dropped."""
        ...


Parameters = tuple[tuple[str, bool | int | str], ...]


class Answer(dict[str, np.ndarray]):
    """A response's outputs with its own parameters (a Python model's ``InferenceResponse(parameters=...)``), which
    the server sends with them, as Triton sends a response's parameters (HTTP's ``parameters`` object, gRPC's map);
    an answer without parameters is a plain dict."""

    def __init__(self, outputs: Mapping[str, np.ndarray], parameters: Parameters) -> None:
        super().__init__(outputs)
        self.parameters = parameters


def answered(outputs: dict[str, np.ndarray], parameters: Parameters) -> dict[str, np.ndarray]:
    """``outputs`` with ``parameters`` (an ``Answer``), or as they are where there are none."""
    return Answer(outputs, parameters) if parameters else outputs


def parameters_of(outputs: Mapping[str, np.ndarray]) -> Parameters:
    """The parameters of the response whose outputs these are (none: ``()``)."""
    return outputs.parameters if isinstance(outputs, Answer) else ()


def selected(outputs: dict[str, np.ndarray], names: Iterable[str] | None) -> dict[str, np.ndarray]:
    """The outputs ``names`` of a response (none given: all), its parameters kept."""
    if not names:
        return outputs
    chosen = {name: outputs[name] for name in names}
    return Answer(chosen, outputs.parameters) if isinstance(outputs, Answer) else chosen


NO_FACTS = RequestFacts()
REQUEST: ContextVar[RequestFacts] = ContextVar("polystack_request", default=NO_FACTS)
# the instance (its index among the model's instances, in instance group order) the server's rate limiter gave
# its resources to, for the call this thread runs now: a model with instances of its own runs it there, as Triton
# runs the payload on the instance its rate limiter staged (None: no rate limiter, any free instance)
CHARGED: ContextVar[int | None] = ContextVar("polystack_charged_instance", default=None)


def run_as(facts: RequestFacts, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` as the call that runs the request ``facts`` describes (on the thread that runs it)."""
    token = REQUEST.set(facts)
    try:
        return fn(*args)
    finally:
        REQUEST.reset(token)


@dataclass(frozen=True)
class ModelCall:
    """A request a model sends to another model its server serves (``version`` None: the latest)."""

    model: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] = ()  # none: all
    version: int | None = None
    request_id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)  # what schedules it: its sequence, its timeout
    model_parameters: Mapping[str, Any] = field(default_factory=dict)  # what the called model sees, as given
    caller: str = ""  # the calling model's name, which errors name
    callers: tuple[str, ...] = ()  # the model instances waiting for its answer (``RequestFacts.callers``), the caller's last
    cancel: threading.Event | None = None  # set when the caller cancels it (a stream's: ``ResponseIterator.cancel``)
    trace: Any = None  # the calling request's trace (``RequestFacts.trace``) it is traced in; None: not traced


class Host(Protocol):
    """The server, as the models it hosts see it."""

    custom_metrics: CustomMetrics  # the metric families its models define, shown on its /metrics

    def call(self, call: ModelCall) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        """Send ``call`` from a model's thread; its outputs, or the polystack error that failed it, come on the
        future. Raises (a polystack error) when it cannot be sent at all."""
        ...

    def stream(self, call: ModelCall, responses: Responses) -> concurrent.futures.Future[None]:
        """Send ``call`` from a model's thread, reading its responses as a stream (a decoupled model's any number,
        another's one): each goes to ``responses`` as it comes, the last final. The future fails (a polystack error)
        when the call cannot run; raises when it cannot be sent at all."""
        ...

    def load_model(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        """Load ``name`` as the repository extension's load does (``config``, ``file:`` parameters), from a model's
        thread; the future says when it is done, or why it failed."""
        ...

    def unload_model(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        ...

    def model_ready(self, name: str, version: str | None) -> bool: ...


HOST: ContextVar[Host | None] = ContextVar("polystack_host", default=None)


@contextlib.contextmanager
def hosted_by(host: Host) -> Iterator[None]:
    """Models loaded within are hosted by ``host`` (they take it as they load)."""
    token = HOST.set(host)
    try:
        yield
    finally:
        HOST.reset(token)


# set while a model loads afresh (its files were modified since its last load, their contents the same): it keeps
# nothing of the model it replaces, as Triton reloads a model whose files' modification times changed
AFRESH: ContextVar[bool] = ContextVar("polystack_afresh", default=False)


@contextlib.contextmanager
def afresh(yes: bool = True) -> Iterator[None]:
    """Models loaded within load afresh (``AFRESH``) when ``yes``."""
    token = AFRESH.set(yes)
    try:
        yield
    finally:
        AFRESH.reset(token)
