"""The run's store of row texts: every text reads back exactly, whatever the order or the threads that added
them, and a long run's alike rows cost a small share of their size."""

from __future__ import annotations

import random
import threading
import zlib

from grd_blocks.row_texts import BLOCK, RowTexts


def _text(i: int) -> bytes:
    return (f'{{"attempts": 1, "elapsed_s": 0.00{i % 10}, "log_path": "/work/logs/p.c{i}.attempt-1.log", '
            f'"name": "c{i}", "returncode": 0, "status": "COMPLETED", "stdout_tail": ""}}').encode()


def test_every_text_reads_back_exactly_in_any_order() -> None:
    store = RowTexts()
    texts = [_text(i) for i in range(10 * BLOCK + 7)]  # full blocks and an open one
    assert [store.add(text) for text in texts] == list(range(len(texts)))
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    assert all(store.text(number) == texts[number] and store.length(number) == len(texts[number])
               for number in order)


def test_texts_added_from_many_threads_get_distinct_numbers_and_read_back() -> None:
    store = RowTexts()
    got: dict[int, bytes] = {}
    lock = threading.Lock()

    def add(offset: int) -> None:
        for i in range(offset, offset + 500):
            number = store.add(_text(i))
            with lock:
                got[number] = _text(i)

    threads = [threading.Thread(target=add, args=(k * 500,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(4_000))
    assert all(store.text(number) == text for number, text in got.items())


def test_a_long_runs_alike_rows_are_kept_at_a_small_share_of_their_size() -> None:
    store = RowTexts()
    texts = [_text(i) for i in range(100 * BLOCK)]
    for text in texts:
        store.add(text)
    kept = sum(len(block) for block in store._blocks)  # what the full blocks hold (all of them here)
    assert kept < sum(map(len, texts)) / 5, kept
    assert zlib.decompress(store._blocks[3]) == b"".join(texts[3 * BLOCK:4 * BLOCK])
