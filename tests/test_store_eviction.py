"""The store's size bound (``--store-max-mb``) over real sockets with the openai SDK: the
oldest responses are evicted first, and an evicted one is gone the way OpenAI says so."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.test_store_adapter import adapted

RESPONSES = 12
# A few KB: room for some of the demo's responses (each 1-2 KB encoded with its input), not
# for all of them.
MAX_MB = 6 / 1024


@pytest.mark.parametrize("store", ["memory", "sqlite:///bounded.db"])
def test_the_oldest_responses_are_evicted_first(store: str, tmp_path: Path) -> None:
    with adapted(store=store, data_dir=str(tmp_path), store_max_mb=MAX_MB) as (client, _, _):
        made = [client.responses.create(model="demo", input=f"turn {n} " + "words " * 50).id
                for n in range(RESPONSES)]
        kept = []
        for response_id in made:
            try:
                kept.append(client.responses.retrieve(response_id).id == response_id)
            except openai.NotFoundError as gone:
                assert gone.status_code == 404
                assert gone.body == {"message": f"Response with id '{response_id}' not found.",
                                     "type": "invalid_request_error", "param": "response_id",
                                     "code": "not_found"}
                kept.append(False)
        # Some evicted, some kept, and every evicted one older than every kept one.
        first_kept = kept.index(True)
        assert 0 < first_kept < RESPONSES - 1
        assert kept == [False] * first_kept + [True] * (RESPONSES - first_kept)
        # An evicted response cannot be continued either.
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="demo", input="more", previous_response_id=made[0])
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "previous_response_not_found"
        assert client.responses.create(model="demo", input="more",
                                       previous_response_id=made[-1]).output_text
