"""SGLangEngine against a fake SGLang 0.5.23 server in another process: shapes, retries, faults."""

import threading
import time

import httpx

import pytest

from megatron_zppo.build import eval_sampling
from megatron_zppo.config import EvalConfig
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from megatron_zppo.rollout.sglang_engine import (
    _checked_logprobs,
    MalformedResponse,
    SGLangError,
    image_payload,
    parse_generation,
    sampling_payload,
    video_payload,
)
from tests.rollout.fake_sglang import DEFAULT_LEN, EOS, VOCAB, FakeSGLang, fake_logprob, fake_token

pytestmark = pytest.mark.timeout(60)

PARAMS = SamplingParams(max_new_tokens=32)


def expected_ids(prompt, sample, length=DEFAULT_LEN):
    return [fake_token(prompt, sample, pos) for pos in range(length)]


def test_engine_satisfies_the_rollout_protocol(server, make_engine):
    assert isinstance(make_engine(server.url), RolloutEngine)


def test_generate_returns_n_samples_per_request_in_request_order(server, make_engine):
    engine = make_engine(server.url)
    prompts = [[1, 2, 3], [40, 50], [7]]
    groups = engine.generate([GenerateRequest(p, n=n) for p, n in zip(prompts, (1, 3, 2))], PARAMS)

    assert [len(g) for g in groups] == [1, 3, 2]
    for prompt, group in zip(prompts, groups):
        for sample, gen in enumerate(group):
            assert gen.response_ids == expected_ids(prompt, sample)
            assert gen.logprobs == [fake_logprob(len(prompt) + i, t) for i, t in enumerate(gen.response_ids)]
            assert gen.finish_reason == "stop" and gen.weight_version == "default"
            assert gen.text.split() == [f"t{t}" for t in gen.response_ids]
    assert engine.stats.tokens_generated == 6 * DEFAULT_LEN


def test_generate_sends_token_ids_logprob_flags_and_request_id(server, make_engine):
    make_engine(server.url).generate([GenerateRequest([5, 6], n=2, request_id="q17", images=("/img/a.png",))], PARAMS)
    body = server.last_generate()
    assert body["input_ids"] == [5, 6] and "text" not in body
    assert body["return_logprob"] is True and body["logprob_start_len"] == -1
    assert body["rid"] == "q17" and body["image_data"] == "/img/a.png"
    assert body["sampling_params"]["n"] == 2 and body["sampling_params"]["max_new_tokens"] == 32


def test_sampling_params_map_onto_sglang_names():
    evaluation = sampling_payload(eval_sampling(EvalConfig(max_new_tokens=512), seed=None), 4)  # the paper's
    assert evaluation == {"max_new_tokens": 512, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
                          "presence_penalty": 1.5, "n": 4}
    seeded = sampling_payload(SamplingParams(top_k=-1, seed=7, stop_token_ids=(2, 3)), 1)
    assert "top_k" not in seeded  # -1 is SGLang's default "off"; omitting it cannot be misread
    assert seeded["sampling_seed"] == 7 and seeded["stop_token_ids"] == [2, 3]


def test_image_bytes_become_a_base64_data_uri_and_several_images_a_list():
    assert image_payload([b"\x89PNG"]) == "data:image;base64,iVBORw=="
    assert image_payload(["a.png", "http://x/b.jpg"]) == ["a.png", "http://x/b.jpg"]


def test_videos_travel_as_video_data_beside_the_images(server, make_engine):
    """The stand-in's contract only (SGLang's field names and forms); not checked against a real
    vision-language SGLang server, which samples a video's frames by its own rule."""
    assert video_payload([b"\x00\x00\x00\x18ftyp"]) == "data:video/mp4;base64,AAAAGGZ0eXA="
    assert video_payload(["a.mp4", "http://x/b.mp4"]) == ["a.mp4", "http://x/b.mp4"]
    req = GenerateRequest([5, 6], 1, ("/img/a.png",), "v1", videos=(b"\x00\x00\x00\x18ftyp", "/v/b.mp4"))
    make_engine(server.url).generate([req], PARAMS)
    body = server.last_generate()
    assert body["image_data"] == "/img/a.png" and body["video_data"] == ["data:video/mp4;base64,AAAAGGZ0eXA=", "/v/b.mp4"]
    make_engine(server.url).generate([GenerateRequest([5, 6], 1, (), "v2")], PARAMS)
    assert "video_data" not in server.last_generate()
    import httpx

    bad = httpx.post(f"{server.url}/generate", json={"input_ids": [1], "video_data": [3]}, timeout=10)
    assert bad.status_code == 400 and "Could not decode video" in bad.text


def test_max_new_tokens_cut_is_reported_as_length(server, make_engine):
    [[gen]] = make_engine(server.url).generate([GenerateRequest([9])], SamplingParams(max_new_tokens=4))
    assert gen.finish_reason == "length" and gen.response_ids == expected_ids([9], 0, 4)


def test_stop_token_ids_end_generation_with_stop(server, make_engine):
    stop = fake_token([9], 0, 2)
    [[gen]] = make_engine(server.url).generate([GenerateRequest([9])], SamplingParams(stop_token_ids=(stop,)))
    assert gen.response_ids == expected_ids([9], 0, 3) and gen.finish_reason == "stop"


def test_score_returns_logprobs_of_the_response_tokens_only(server, make_engine):
    engine = make_engine(server.url)
    prompts, responses = [[1, 2, 3], [4]], [[10, 11], [12, 13, 14]]
    scores = engine.score(prompts, responses)
    assert scores == [[fake_logprob(len(p) + i, t) for i, t in enumerate(r)] for p, r in zip(prompts, responses)]
    engine.score([[1, 2, 3]], [[10, 11]])
    body = server.last_generate()
    assert body["input_ids"] == [1, 2, 3, 10, 11] and body["logprob_start_len"] == 2
    assert body["sampling_params"]["max_new_tokens"] == 0 and body["return_logprob"] is True


@pytest.mark.parametrize("vocab_size", [VOCAB, None])
def test_score_accepts_sglangs_zero_for_the_last_vocabulary_id(server, make_engine, vocab_size):
    # SGLang 0.5.23 reports scored ids >= vocab_size - 1 as 0; a sampled last id once failed the live lane.
    assert make_engine(server.url, vocab_size=vocab_size).score([[1]], [[VOCAB - 1, 5]]) == [
        [fake_logprob(1, VOCAB - 1), fake_logprob(2, 5)]]


def test_scoring_still_refuses_a_zero_for_an_ordinary_token():
    with pytest.raises(MalformedResponse, match="scoring: logprob entry 1 is"):
        _checked_logprobs([[-0.1, VOCAB - 1, None], [-0.2, 0, None]], [VOCAB - 1, 5], "scoring", VOCAB - 1)


def test_score_of_empty_response_is_empty_and_empty_prompt_is_refused(server, make_engine):
    engine = make_engine(server.url)
    assert engine.score([[1]], [[]]) == [[]]
    with pytest.raises(ValueError, match="non-empty prompt"):
        engine.score([[]], [[1]])
    with pytest.raises(NotImplementedError, match="scoring with images is not supported on SGLang"):
        engine.score([[1]], [[2]], [(b"png",)])
    assert engine.score([[1]], [[2]], [()]) == engine.score([[1]], [[2]])  # no image: scored as before


def test_503_while_starting_is_retried_until_ready(make_engine):
    with FakeSGLang(starting_s=1.0) as starting:
        engine = make_engine(starting.url, retries=8, backoff_s=0.1)
        assert engine.health() is False
        groups = engine.generate([GenerateRequest([1])], PARAMS)
        assert len(groups[0]) == 1 and engine.health() is True
        assert starting.log().count("/generate") >= 2 and engine.stats.extra["http_retries"] >= 1


def test_dropped_connections_and_5xx_are_retried(server, make_engine):
    server.set_faults(drop_connections=2, status_503=1)
    groups = make_engine(server.url).generate([GenerateRequest([1, 2], n=2)], PARAMS)
    assert [g.response_ids for g in groups[0]] == [expected_ids([1, 2], 0), expected_ids([1, 2], 1)]
    assert server.log().count("/generate") == 4


def test_server_killed_mid_batch_then_restarted_yields_complete_groups(server, make_engine):
    engine = make_engine(server.url, retries=10, backoff_s=0.2, max_concurrency=2)
    server.set_faults(die_after_generates=2, token_delay_s=0.05)
    restarter = threading.Timer(0.8, server.restart)
    restarter.start()
    groups = engine.generate([GenerateRequest([i], n=2) for i in range(6)], PARAMS)
    restarter.join()
    assert engine.stats.extra["http_retries"] >= 1  # the kill really hit requests in flight
    assert [len(g) for g in groups] == [2] * 6
    assert [g[1].response_ids for g in groups] == [expected_ids([i], 1) for i in range(6)]


def test_server_killed_for_good_raises_naming_server_and_request(server, make_engine):
    engine = make_engine(server.url, retries=2)
    server.set_faults(die_after_generates=1)
    requests = [GenerateRequest([1], request_id="ok-1"), GenerateRequest([2], request_id="doomed-2")]
    with pytest.raises(SGLangError) as info:
        engine.generate(requests, PARAMS)
    message = str(info.value)
    assert server.url in message and "after 3 attempt(s)" in message
    assert "'ok-1'" in message or "'doomed-2'" in message
    assert engine.health() is False


def test_response_with_fewer_logprobs_than_tokens_is_malformed(server, make_engine):
    server.set_faults(short_logprobs=True)
    with pytest.raises(MalformedResponse, match=f"{DEFAULT_LEN} output tokens but {DEFAULT_LEN - 1} logprobs"):
        make_engine(server.url).generate([GenerateRequest([1], n=2), GenerateRequest([2])], PARAMS)


def test_response_longer_than_max_new_tokens_is_malformed(server, make_engine):
    server.set_faults(overlong=1)
    with pytest.raises(MalformedResponse, match="5 output tokens exceed max_new_tokens=4"):
        make_engine(server.url).generate([GenerateRequest([1])], SamplingParams(max_new_tokens=4))


def test_misaligned_or_unknown_fields_are_malformed():
    item = {"output_ids": [5, 6], "meta_info": {"output_token_logprobs": [[-0.1, 5, None], [-0.2, 7, None]],
                                                  "finish_reason": {"type": "stop", "matched": EOS}}}
    with pytest.raises(MalformedResponse, match="logprob entry 1"):
        parse_generation(item, 8, "here")
    item["meta_info"]["output_token_logprobs"][1][1] = 6
    item["meta_info"]["finish_reason"] = None
    with pytest.raises(MalformedResponse, match="unknown finish_reason"):
        parse_generation(item, 8, "here")


def test_abort_returns_the_partial_samples_with_abort_finish(server, make_engine):
    engine = make_engine(server.url)
    server.set_faults(token_delay_s=0.2)
    result = {}
    worker = threading.Thread(target=lambda: result.update(g=engine.generate(
        [GenerateRequest([3], n=2, request_id="slow")], PARAMS)))
    worker.start()
    time.sleep(0.5)
    engine.abort_all()
    worker.join(timeout=20)
    [group] = result["g"]
    assert [g.finish_reason for g in group] == ["abort", "abort"]
    assert all(len(g.response_ids) < DEFAULT_LEN for g in group) and group[0].response_ids  # partial, kept


def test_a_generation_the_server_aborts_unasked_is_generated_again_and_counted(server, make_engine):
    engine = make_engine(server.url)
    server.set_faults(abort_generations=2)  # the first two generations end "abort" after 2 tokens
    [group] = engine.generate([GenerateRequest([3], n=1, request_id="r")], PARAMS)
    assert [g.finish_reason for g in group] != ["abort"] and len(group[0].response_ids) > 2
    assert server.log().count("/generate") == 3 and engine.stats.extra["partial_generations_lost"] == 2


def test_an_update_request_that_does_not_say_aborts_the_running_generations(server, make_engine):
    """What the fake does with an update that leaves abort_all_requests unsaid (SGLang's default is
    True for /update_weight_version): the generation running then is aborted, and the client
    generates it again and counts the loss. The sync always says False (test_weight_sync.py)."""
    engine = make_engine(server.url)
    server.set_faults(token_delay_s=0.2)
    result = {}
    worker = threading.Thread(target=lambda: result.update(g=engine.generate([GenerateRequest([3], request_id="g")],
                                                                             PARAMS)))
    worker.start()
    deadline = time.monotonic() + 20
    while not server.generating() and time.monotonic() < deadline:
        time.sleep(0.01)
    httpx.post(server.url + "/update_weights_from_disk", json={"model_path": "/nonexistent"}, timeout=10)
    worker.join(timeout=30)
    assert result["g"][0][0].finish_reason != "abort" and engine.stats.extra["partial_generations_lost"] == 1


def test_flush_cache_retries_while_busy_and_gives_up_loudly(server, make_engine):
    engine = make_engine(server.url)
    server.set_faults(busy_flushes=2)
    engine.flush_cache()
    assert server.log().count("/flush_cache") == 3
    server.set_faults(busy_flushes=100)
    with pytest.raises(SGLangError, match="HTTP 400"):
        engine.flush_cache(attempts=3)


def test_api_keys_are_sent_as_bearer_tokens_and_4xx_is_not_retried(make_engine):
    with FakeSGLang(api_key="inference-key", admin_api_key="admin-key") as keyed:
        full = make_engine(keyed.url, api_key="inference-key", admin_api_key="admin-key")
        assert full.generate([GenerateRequest([1])], PARAMS)[0][0].response_ids == expected_ids([1], 0)
        full.flush_cache()
        user_only = make_engine(keyed.url, api_key="inference-key")
        with pytest.raises(SGLangError, match="HTTP 401"):
            user_only.pause()
        assert keyed.log().count("/pause_generation") == 1


# ---- a server that answers garbage or nothing: retried like the other faults, then named --------
def test_a_body_that_is_not_json_is_retried_then_named(server, make_engine):
    server.set_faults(garbage_body=2)
    groups = make_engine(server.url).generate([GenerateRequest([1, 2], request_id="q1")], PARAMS)
    assert groups[0][0].response_ids == expected_ids([1, 2], 0) and server.log().count("/generate") == 3
    server.set_faults(garbage_body=100)
    with pytest.raises(MalformedResponse) as info:
        make_engine(server.url, retries=2).generate([GenerateRequest([1], request_id="q2")], PARAMS)
    message = str(info.value)
    assert f"student server {server.url}/generate failed request 'q2' after 3 attempt(s)" in message
    assert "answer is not JSON (HTTP 200, content-type 'text/plain', body starts '<html>" in message


def test_token_ids_outside_the_vocabulary_are_malformed_at_the_engine(server, make_engine):
    engine = make_engine(server.url, vocab_size=VOCAB, retries=1)
    server.set_faults(out_of_vocab=1)
    assert engine.generate([GenerateRequest([3])], PARAMS)[0][0].response_ids == expected_ids([3], 0)  # retried
    server.set_faults(out_of_vocab=100)
    with pytest.raises(MalformedResponse, match=rf"request 'q3' after 2 attempt\(s\); last error: malformed answer: "
                                                rf"generation 0: output token 0 has id {VOCAB + 5}, outside the "
                                                rf"model's vocabulary \[0, {VOCAB}\)"):
        engine.generate([GenerateRequest([3], request_id="q3")], PARAMS)


def test_a_generation_without_its_fields_is_malformed_after_retries(server, make_engine):
    server.set_faults(missing_meta=100)
    with pytest.raises(MalformedResponse, match=r"request 'q4' after 2 attempt\(s\).*generation 0: missing or bad "
                                                r"field in generation \(KeyError\('meta_info'\)\)"):
        make_engine(server.url, retries=1).generate([GenerateRequest([4], request_id="q4")], PARAMS)


@pytest.mark.parametrize("entry", [[None, 5, None], ["x", 5, None], [float("nan"), 5, None], [2.5, 5, None], 7])
def test_logprob_entries_that_are_not_logprobs_are_malformed(entry):
    item = {"output_ids": [5], "meta_info": {"output_token_logprobs": [entry],
                                              "finish_reason": {"type": "stop", "matched": EOS}}}
    with pytest.raises(MalformedResponse, match="here: logprob entry 0 is"):
        parse_generation(item, 8, "here")


def test_a_server_that_takes_the_request_and_never_answers_is_named_after_the_timeout(server, make_engine):
    server.set_faults(stall=1)
    engine = make_engine(server.url, timeout_s=1.0, retries=3)
    with pytest.raises(SGLangError, match=rf"student server {server.url}/generate did not answer request 'q5' "
                                          r"within 1 s: it took the request and went silent"):
        engine.generate([GenerateRequest([5], request_id="q5")], PARAMS)
    assert server.log().count("/generate") == 1  # not waited for again and again
    assert engine.generate([GenerateRequest([5])], PARAMS)[0][0].response_ids == expected_ids([5], 0)
