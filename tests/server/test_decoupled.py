"""ResponseStream: a decoupled model's responses for one request, sent from its threads, read on the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from polystack.server import decoupled
from polystack.server.decoupled import ResponseStream


def test_a_model_s_sends_wait_while_its_client_reads_none_and_go_on_as_it_reads() -> None:
    async def main() -> tuple[int, int]:
        stream = ResponseStream(asyncio.get_running_loop())
        sent = []

        def model() -> None:
            for i in range(decoupled.UNREAD + 10):
                stream.send({"y": np.array([i])}, False)
                sent.append(i)
            stream.send(None, True)

        thread = threading.Thread(target=model)
        thread.start()
        await asyncio.sleep(0.3)  # nothing read: the model waits with UNREAD responses out
        waiting_at = len(sent)
        read = 0
        async for _, final in stream:
            read += 0 if final else 1
        thread.join(5)
        return waiting_at, read

    waiting_at, read = asyncio.run(asyncio.wait_for(main(), 10))  # bounded, whatever the stream does
    assert waiting_at == decoupled.UNREAD  # held there, not the whole stream in the server's memory
    assert read == decoupled.UNREAD + 10  # then every response, in order, as the client read them


def test_a_model_s_large_sends_wait_at_a_bounded_number_of_bytes_unread() -> None:
    """helper-273: 256 answers of 1 MB each were held for a client that stopped reading (a bound in responses
    alone); a response larger than the bound alone still goes."""
    mib = np.zeros(1 << 18, np.float32)  # 1 MiB

    async def main() -> tuple[int, list[int]]:
        stream = ResponseStream(asyncio.get_running_loop())
        sent: list[int] = []

        def model() -> None:
            stream.send({"y": np.full(24 << 20, 7, np.uint8)}, False)  # 24 MiB: more than the bound, alone
            for i in range(20):
                stream.send({"y": mib + i}, False)
                sent.append(i)
            stream.send(None, True)

        thread = threading.Thread(target=model)
        thread.start()
        await asyncio.sleep(0.3)
        waiting_first = len(sent)  # the large one unread: nothing more goes
        got: list[int] = []
        async for outputs, final in stream:
            if not final:
                got.append(int(outputs["y"].flat[0]))  # type: ignore[index]
            if len(got) == 1:
                await asyncio.sleep(0.3)
                waiting_at = len(sent)  # the large one read: a bounded number of bytes goes out
        thread.join(5)
        assert waiting_first == 0, waiting_first
        return waiting_at, got

    waiting_at, got = asyncio.run(asyncio.wait_for(main(), 10))
    assert waiting_at == decoupled.UNREAD_BYTES >> 20  # 8 MiB unread: the model waits there
    assert got == [7, *range(20)]  # then every response, in order


def test_a_cancelled_stream_lets_its_waiting_senders_go_on_and_drops_what_they_send() -> None:
    async def main() -> bool:
        stream = ResponseStream(asyncio.get_running_loop())
        done = threading.Event()

        def model() -> None:
            for i in range(decoupled.UNREAD + 10):
                stream.send({"y": np.array([i])}, False)
            done.set()

        threading.Thread(target=model, daemon=True).start()
        await asyncio.sleep(0.2)
        stream.cancel()  # the client went away
        return await asyncio.to_thread(done.wait, 5)

    assert asyncio.run(asyncio.wait_for(main(), 10))
