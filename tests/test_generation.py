"""Generation: parity with transformers, the KV cache, batching with padding, sampling rules, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import DECODER_BASE, DECODER_CACHE, DECODER_GQA, check_compiled_sampling_and_nan, random_model
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llama import ModelConfig, Sampling, Transformer, generate, generate_batch, generate_stream, sample_next
from llama.inference.sampling import min_p_filter, top_k_filter, top_p_filter

BASE = DECODER_BASE
MHA = ModelConfig(**BASE)
GQA = ModelConfig(**DECODER_GQA)
# Weights larger than the training init: the models' greedy choices are clear-cut.
CLEAR_CUT = 0.08


def naive_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with no cache at all: the whole sequence goes through the model every step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("config", [MHA, GQA], ids=["mha", "gqa"])
def test_greedy_equals_transformers_generate(config, transformers):
    from llama.formats.convert import llama_to_hf_state_dict

    model = random_model(config, weights_std=CLEAR_CUT)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf())).eval()
    hf.load_state_dict(llama_to_hf_state_dict(model.state_dict(), config), strict=False)
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.pad_token_id = 0
    prompt = [1, 17, 42, 5, 88]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=64)
    theirs = out[0, len(prompt):].tolist()
    ours = generate(model, prompt, max_new_tokens=64)
    assert len(ours) == 64
    assert ours == theirs
    assert len(set(ours)) >= 3  # not one token repeated, which would make the comparison weak


def test_cached_generation_equals_recomputing_everything():
    model = random_model(GQA, seed=1, weights_std=CLEAR_CUT)
    prompt = [3, 9, 27, 81]
    assert generate(model, prompt, 20) == naive_greedy(model, prompt, 20)


def test_last_only_equals_the_last_row_of_the_full_forward():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, last = model(tokens), model(tokens, last_only=True)
    assert last.shape == (2, 1, 97)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_batched_generation_with_left_padding_equals_one_at_a_time():
    model = random_model(GQA, seed=2, weights_std=CLEAR_CUT)
    prompts = [[1, 5, 9, 2, 7, 3, 11], [1, 60], [1, 8, 8, 30, 4]]
    batched = generate_batch(model, prompts, max_new_tokens=24)
    alone = [generate(model, p, max_new_tokens=24) for p in prompts]
    assert batched == alone
    assert len({tuple(x) for x in batched}) == 3  # different prompts, different continuations


def test_batched_generation_stops_each_sequence_at_its_own_stop_id():
    model = random_model(GQA, seed=2, weights_std=CLEAR_CUT)
    prompts = [[1, 5, 9, 2], [1, 60]]
    free = generate_batch(model, prompts, max_new_tokens=12)
    stop = free[0][3]  # the 4th token of the first sequence
    stopped = generate_batch(model, prompts, max_new_tokens=12, sampling=Sampling(stop_ids=[stop]))
    for full, cut in zip(free, stopped):
        expected = full[: full.index(stop)] if stop in full else full
        assert cut == expected


def test_stream_yields_what_generate_returns_and_leaves_no_cache_on_the_model():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    stream = generate_stream(model, [1, 2, 3], 10)
    first = [next(stream) for _ in range(4)]
    assert model.layers[0].attention.cache is None  # the stream keeps its cache to itself between steps
    stream.close()  # a consumer that stops early
    assert first == generate(model, [1, 2, 3], 10)[:4]
    assert model.layers[0].attention.cache is None


def test_interleaved_generations_on_one_model_each_get_their_own_tokens():
    model = random_model(GQA, seed=4, weights_std=CLEAR_CUT)
    warm = Sampling(temperature=1.0, seed=5)
    alone_a, alone_b = generate(model, [1, 5, 9], 12), generate(model, [2, 60], 12, warm)
    assert alone_a != alone_b
    a, b = generate_stream(model, [1, 5, 9], 12), generate_stream(model, [2, 60], 12, warm)
    got_a, got_b = [], []
    for _ in range(12):  # one step of each in turn, and a whole generation between them
        got_a.append(next(a))
        got_b.append(next(b))
        assert generate(model, [7, 7, 7], 3) == generate(model, [7, 7, 7], 3)
        generate_batch(model, [[3], [4, 4]], 2)
    assert (got_a, got_b) == (alone_a, alone_b)


def test_a_stream_checks_its_arguments_when_called_not_at_the_first_token():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate_stream(model, [], 5)  # no next(): the error comes before anything is printed


def test_stop_ids_end_generation_without_emitting_the_stop_id():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    free = generate(model, [1, 2, 3], 20)
    stop = free[5]
    cut = generate(model, [1, 2, 3], 20, Sampling(stop_ids={stop}))
    assert cut == free[: free.index(stop)]
    assert generate(model, [1, 2, 3], 20, Sampling(stop_ids=[free[0]])) == []


def test_same_seed_same_sample_different_seed_different_sample():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    settings = Sampling(temperature=1.5, seed=123)
    a = generate(model, [1], 30, settings)
    assert a == generate(model, [1], 30, settings)
    assert a != generate(model, [1], 30, dataclasses.replace(settings, seed=124))
    assert a != generate(model, [1], 30)  # sampling is not greedy decoding


def test_seed_does_not_touch_the_global_random_state():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    generate(model, [1], 5, Sampling(temperature=1.0, seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_top_k_1_and_tiny_top_p_and_min_p_1_are_greedy():
    model = random_model(GQA, weights_std=CLEAR_CUT)
    greedy = generate(model, [1, 4], 10)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        assert generate(model, [1, 4], 10, Sampling(temperature=2.0, seed=0, **kwargs)) == greedy, kwargs


def test_sampling_respects_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]]).expand(2000, 5)
    draws = sample_next(logits, Sampling(temperature=5.0, top_k=2), generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}


def test_sampling_frequencies_follow_the_softmax():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]).expand(20000, 3)
    draws = sample_next(logits, Sampling(temperature=1.0), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=40).map(
    lambda xs: torch.tensor(xs, dtype=torch.float32)
)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
@example(torch.zeros(17), 0.5)  # all tied: an unstable sort could leave argmax's token out
def test_top_p_keeps_the_smallest_nucleus(z, p):
    kept = top_p_filter(z, p) > float("-inf")
    probs = torch.softmax(z.double(), -1)
    assert kept[z.argmax()]  # the most likely token always survives
    mass = probs[kept].sum()
    assert mass >= p - 1e-5  # enough mass ...
    # ... and minimal: dropping the least likely kept token would fall short of p.
    smallest = probs[kept].min()
    assert mass - smallest < p + 1e-5 or kept.sum() == 1


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 50))
def test_top_k_keeps_k_largest(z, k):
    kept = top_k_filter(z, k) > float("-inf")
    assert kept.sum() >= min(k, len(z))  # ties with the k-th value may add more
    assert z[kept].min() >= z[~kept].max() if (~kept).any() else True


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_threshold(z, min_p):
    kept = min_p_filter(z, min_p) > float("-inf")
    probs = torch.softmax(z.double(), -1)
    assert kept[z.argmax()]
    assert torch.all(probs[kept] >= min_p * probs.max() * (1 - 1e-4))
    assert torch.all(probs[~kept] < min_p * probs.max() * (1 + 1e-4))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0}, r"temperature must be >= 0 and finite, got -1.0; use 0 for greedy decoding"),
    ({"temperature": float("nan")}, r"temperature must be >= 0 and finite, got nan"),
    ({"temperature": float("inf")}, r"temperature must be >= 0 and finite, got inf"),
    ({"temperature": "0.8"}, r"temperature must be >= 0 and finite, got '0.8'"),
    ({"top_k": 0}, r"top_k must be a positive integer, got 0; use None to disable it"),
    ({"top_k": 2.5}, r"top_k must be a positive integer, got 2.5; use None to disable it"),
    ({"top_k": True}, r"top_k must be a positive integer, got True"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5; use None to disable it"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0; use None to disable it"),
    ({"top_p": float("nan")}, r"top_p must be in \(0, 1\], got nan"),
    ({"min_p": -0.1}, r"min_p must be in \[0, 1\], got -0.1; use None to disable it"),
    ({"min_p": 1.01}, r"min_p must be in \[0, 1\], got 1.01; use None to disable it"),
    ({"min_p": float("nan")}, r"min_p must be in \[0, 1\], got nan"),
    ({"top_p": float("inf")}, r"top_p must be in \(0, 1\], got inf"),
    ({"seed": 1.5}, r"seed must be an integer or None, got 1.5"),
    ({"stop_ids": 2}, r"stop_ids must be a collection of token ids, got 2; for a single id write stop_ids=\{2\}"),
    ({"stop_ids": "2"}, r"stop_ids must be a collection of token ids, got '2'"),
    ({"stop_ids": [2, 3.0]}, r"stop_ids must be integer token ids, got \[2, 3.0\]"),
])
def test_sampling_rejects_each_bad_setting_with_its_fix(kwargs, message):
    # Greedy (the default temperature) ignores the filters, yet checks them: a typo shows at once.
    with pytest.raises(ValueError, match=f"^{message}"):
        Sampling(**kwargs)
    if "temperature" not in kwargs:
        with pytest.raises(ValueError, match=f"^{message}"):
            Sampling(temperature=1.0, **kwargs)


def test_sampling_settings_are_frozen_and_normalised():
    settings = Sampling(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, stop_ids=[2, 2, 13], seed=0)
    assert settings.stop_ids == frozenset({2, 13})
    assert settings == Sampling(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, stop_ids={13, 2}, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.temperature = 1.0
    assert Sampling(top_p=1.0, min_p=0.0, top_k=1).temperature == 0  # the edges of each range are allowed
    assert Sampling().generator("cpu") is None  # no seed: the global random stream
    a, b = settings.generator("cpu"), settings.generator("cpu")
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))  # a fresh stream each call


def test_errors_name_the_problem():
    model = random_model(MHA, weights_std=CLEAR_CUT)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="the prompt has 97 tokens but the model's max_seq_len is 96"):
        generate(model, [1] * 97, 1)
    with pytest.raises(ValueError, match="ask for at most 6 new tokens"):
        generate(model, [1] * 90, 7)
    with pytest.raises(TypeError, match=r"sampling must be a llama.Sampling, got 0.8; e.g. sampling=Sampling\("):
        generate(model, [1], 5, 0.8)  # the call style from before Sampling
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [1, 97], 5)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate_batch(model, [], 5)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate_batch(model, [[1], []], 5)
    assert generate(model, [1] * 90, 6) and generate(model, [1], 0) == []
    assert model.layers[0].attention.cache is None  # no error leaves a cache behind


@pytest.mark.parametrize("ids, shown", [([1.0, 40.7], r"got 1.0 \(float\) at position 0"),
                                        ([1, 40.7], r"got 40.7 \(float\) at position 1"),
                                        ([True, 3], r"got True \(bool\) at position 0"),
                                        (["1"], r"got '1' \(str\) at position 0")])
def test_ids_that_are_not_integers_are_refused_not_truncated(ids, shown):
    model = random_model(MHA, weights_std=CLEAR_CUT)
    with pytest.raises(ValueError, match=f"^token ids must be integers, {shown}; pass the ids a tokenizer gave"):
        generate(model, ids, 3)
    with pytest.raises(ValueError, match="token ids must be integers"):
        generate_batch(model, [[1, 2], ids], 3)


def test_integer_ids_of_any_integer_type_are_accepted():
    np = pytest.importorskip("numpy")
    model = random_model(MHA, weights_std=CLEAR_CUT)
    expected = generate(model, [1, 5, 9], 4)
    assert generate(model, torch.tensor([1, 5, 9]), 4) == expected  # 0-d integer tensors
    assert generate(model, np.array([1, 5, 9]), 4) == expected


def test_stop_ids_outside_the_vocabulary_are_refused():
    model = random_model(MHA, weights_std=CLEAR_CUT)  # vocab 97
    message = r"^stop id 97 is outside the model's vocabulary \[0, 97\), so it can never be produced"
    with pytest.raises(ValueError, match=message):
        generate(model, [1], 3, Sampling(stop_ids=[2, 97]))
    with pytest.raises(ValueError, match=message):
        generate_batch(model, [[1]], 3, Sampling(stop_ids={97}))
    assert generate(model, [1], 3, Sampling(stop_ids={96})) is not None  # the last id is a valid one


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0, top_p=0.9, seed=0)],
                         ids=["greedy", "sampled"])
def test_non_finite_weights_give_a_clear_error_not_tokens(sampling):
    model = random_model(MHA, weights_std=CLEAR_CUT)
    with torch.no_grad():
        model.norm.weight[3] = float("nan")  # every logit becomes NaN
    expected = (r"^at new token 1: the model produced NaN logits: its weights may be non-finite; "
                r"check the checkpoint")
    with pytest.raises(ValueError, match=expected):
        generate(model, [1, 2], 5, sampling)  # not [0, 0, 0, 0, 0] (the argmax of NaN), nor multinomial's error
    with pytest.raises(ValueError, match=expected):
        generate_batch(model, [[1, 2], [3]], 5, sampling)


def test_sample_next_refuses_rows_with_no_finite_choice_but_allows_banned_tokens():
    inf = float("inf")
    for sampling in (Sampling(), Sampling(temperature=1.0)):
        banned = torch.tensor([[-inf, 1.0, 0.5], [0.0, -inf, -inf]])  # -inf: a token someone banned
        assert sample_next(banned, sampling, torch.Generator().manual_seed(0)).tolist()[1] == 0
        for row, kind in (([0.0, inf, 1.0], "infinite"), ([-inf, -inf, -inf], "infinite"),
                          ([0.0, float("nan"), 1.0], "NaN")):
            with pytest.raises(ValueError, match=f"^the model produced {kind} logits"):
                sample_next(torch.tensor([[0.0, 1.0, 2.0], row]), sampling)
        with pytest.raises(ValueError, match=r"overflow in torch.float16 \(load it in float32\)"):
            sample_next(torch.tensor([[0.0, inf]], dtype=torch.float16), sampling)


# The compiled decoder runs torch.compile (Inductor and a C++ compiler): about 15 s of CPU per
# graph with a cold cache, which the suite pays once (helpers.DECODER_GQA), for the grouped-query
# model: its graph has the key/value heads' repetition and the tied output, which the multi-head
# one would not add.
@pytest.mark.compile
def test_compiled_decoder_gives_the_eager_greedy_ids():
    from llama.inference.compiled import CompiledDecoder

    model = random_model(GQA, seed=3, weights_std=CLEAR_CUT)
    decoder = CompiledDecoder(model, max_seq_len=DECODER_CACHE)
    for prompt in ([1, 17, 42, 5, 88], [2]):  # the second call reuses the compiled step
        n = DECODER_CACHE - len(prompt)
        assert decoder.generate(prompt, n) == generate(model, prompt, n)
    assert decoder.generate([1, 17], 0) == []
    assert model.layers[0].attention.cache is None  # the cache is removed, as generate does
    check_compiled_sampling_and_nan(decoder, model)


@pytest.mark.compile
def test_compiled_stream_between_other_generations_and_one_stream_per_decoder():
    from llama.inference.compiled import CompiledDecoder

    model = random_model(GQA, seed=4, weights_std=CLEAR_CUT)
    alone_a, alone_b = generate(model, [1, 5, 9], 12), generate(model, [2, 60], 12)
    decoder = CompiledDecoder(model, max_seq_len=DECODER_CACHE)  # the graph the test above compiled: a cache hit
    a, b = decoder.generate_stream([1, 5, 9], 12), generate_stream(model, [2, 60], 12)
    got_a, got_b = [], []
    for _ in range(12):
        got_a.append(next(a))
        got_b.append(next(b))
        generate(model, [7, 7, 7], 3)
    assert (got_a, got_b) == (alone_a, alone_b)
    assert next(a, None) is None  # the stream ends, and gives the decoder back
    first = decoder.generate_stream([1], 5)
    next(first)
    with pytest.raises(RuntimeError, match="this CompiledDecoder is already generating: a stream from it is still open"):
        decoder.generate([2], 5)
    first.close()
    assert decoder.generate([1, 5, 9], 12) == alone_a  # free again once the first stream is closed
    assert model.layers[0].attention.cache is None


def test_compiled_decoder_checks_lengths_before_compiling():
    from llama.inference.compiled import CompiledDecoder

    decoder = CompiledDecoder(random_model(MHA, weights_std=CLEAR_CUT), max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len=16"):
        decoder.generate([1, 2, 3], 14)
    with pytest.raises(ValueError, match="exceeds the model's 96"):
        CompiledDecoder(random_model(MHA, weights_std=CLEAR_CUT), max_seq_len=97)
