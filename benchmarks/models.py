"""The bench models: the same three models behind every system compared.

* ``noop`` returns its inputs: what is left is the framework's own overhead.
* ``simgpu`` stands in for one GPU on a machine without one: under a lock per
  process (concurrent calls in one process run one after another, as kernels
  on one GPU do) it sleeps 10 ms + 0.2 ms per sample, releasing the GIL.
* ``gpufast`` stands in for a real GPU, where per-sample costs decide: under
  the same per-process lock it sleeps 1 ms + 5 µs per sample and returns one
  384-float vector per sample (a numpy array, as a real model's output).
* ``minilm`` embeds sentences with all-MiniLM-L6-v2 (torch, on the CPU unless
  told otherwise).
* ``bertbase`` fills masks with a BERT-base-sized masked LM (the bert-base-uncased
  shape: 12 layers, hidden 768), randomly initialised and built locally with the
  packaged WordPiece tokenizer: no model hub. Meant for a GPU (benchmarks/gpu.sh).

noop and simgpu need only the standard library (gpufast needs numpy), so both
venvs import this module. Every predict call is logged by :mod:`benchmarks.trace` when the
harness asks for it, so worker-side figures come from the model itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from . import trace

# simgpu: fixed cost of one call (a kernel launch and transfer) and cost per sample.
SIMGPU_FIXED_S = 0.010
SIMGPU_PER_SAMPLE_S = 0.0002
# gpufast: fixed cost of one call, cost per sample, and the width of its output vector.
GPUFAST_FIXED_S = 0.001
GPUFAST_PER_SAMPLE_S = 0.000005
GPUFAST_WIDTH = 384
# minilm: sentences the samples are made from (varied lengths, as real traffic).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Batching many small requests keeps the accelerator busy.",
    "How far is the nearest train station from here?",
    "A worker drains its queue and runs one forward pass per batch.",
)


class BenchModel(ABC):
    """A model the benchmark serves: ``load()`` once, then ``predict(batch)``."""

    name = ""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._trace = trace.from_env()

    def load(self) -> None:  # noqa: B027 - optional: a model with nothing to load keeps this no-op
        """Do the heavy, once-per-process part (weights, warm-up)."""

    def predict(self, batch: list[Any]) -> list[Any]:
        """One output per sample, in order; logged to the trace if one is set."""
        start = time.time()
        outputs = self._run(batch)
        if self._trace is not None:
            self._trace.record(start, time.time(), len(batch))
        return outputs

    def predict_plain(self, batch: list[Any]) -> list[Any]:
        """``predict`` made JSON-ready with ``.tolist()``, for systems that store outputs as they are.

        What a user of plain Celery, celery-batches or service-streamer writes for a
        model returning an array; celery-batching takes the array itself.
        """
        outputs = self.predict(batch)
        return outputs.tolist() if hasattr(outputs, "tolist") else outputs

    @abstractmethod
    def _run(self, batch: list[Any]) -> list[Any]:
        """The model itself."""

    @staticmethod
    def sample(index: int) -> Any:
        """The ``index``-th request's input (JSON-serialisable)."""
        return index

    def check(self, sample: Any, output: Any) -> bool:
        """Whether ``output`` is the right answer for ``sample``."""
        return output == sample


class NoopModel(BenchModel):
    """Returns its inputs."""

    name = "noop"

    def _run(self, batch: list[Any]) -> list[Any]:
        return list(batch)


class SimGpuModel(BenchModel):
    """One simulated GPU per process: a lock, a sleep that grows with the batch."""

    name = "simgpu"
    _gpu = threading.Lock()  # one per process, shared by all instances

    def _run(self, batch: list[Any]) -> list[Any]:
        with self._gpu:
            time.sleep(SIMGPU_FIXED_S + SIMGPU_PER_SAMPLE_S * len(batch))
        return list(batch)


class GpuFastModel(BenchModel):
    """A GPU-speed model: 1 ms + 5 µs per sample under the per-process lock, 384 floats out.

    Each sample's vector is its index repeated, so a result can be checked
    without storing the expected outputs.
    """

    name = "gpufast"

    def load(self) -> None:
        import numpy

        self._numpy = numpy

    def _run(self, batch: list[Any]) -> Any:
        with SimGpuModel._gpu:
            time.sleep(GPUFAST_FIXED_S + GPUFAST_PER_SAMPLE_S * len(batch))
        column = self._numpy.asarray(batch, dtype=self._numpy.float32).reshape(-1, 1)
        return self._numpy.repeat(column, GPUFAST_WIDTH, axis=1)

    def check(self, sample: Any, output: Any) -> bool:
        return len(output) == GPUFAST_WIDTH and float(output[0]) == float(sample)


class MiniLMModel(BenchModel):
    """all-MiniLM-L6-v2 sentence embeddings (384 floats per sentence)."""

    name = "minilm"

    def load(self) -> None:
        from celery_batching.models.embeddings import MiniLMEmbedder

        self._embedder = MiniLMEmbedder(device=self.device)
        self._embedder.init_model()
        self._run([self.sample(i) for i in range(64)])  # warm-up, not logged

    def _run(self, batch: list[Any]) -> list[Any]:
        return list(self._embedder.predict(batch))

    @staticmethod
    def sample(index: int) -> str:
        return f"{index}: {SENTENCES[index % len(SENTENCES)]}"

    def check(self, sample: Any, output: Any) -> bool:
        return isinstance(output, list) and len(output) == 384


class BertBaseModel(BenchModel):
    """Fill-mask with a random BERT-base-sized model: the speed of the real thing, built locally."""

    name = "bertbase"

    def load(self) -> None:
        from celery_batching.models.fill_mask import FillMaskModel

        self._model = FillMaskModel(device=self.device, checkpoint=str(_bert_base_checkpoint()), top_k=1)
        self._model.init_model()
        self._run([self.sample(i) for i in range(64)])  # warm-up, not logged

    def _run(self, batch: list[Any]) -> list[Any]:
        return list(self._model.predict(batch))

    @staticmethod
    def sample(index: int) -> str:
        return f"{index}: {SENTENCES[index % len(SENTENCES)]} It was [MASK]."

    def check(self, sample: Any, output: Any) -> bool:
        return isinstance(output, list) and len(output) >= 1


def _bert_base_checkpoint() -> Any:
    """A random bert-base-uncased-shaped checkpoint, written once per machine (renamed into place)."""
    import os
    import tempfile
    from pathlib import Path

    target = Path(tempfile.gettempdir()) / "celery-batching-bench-bert-base"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from celery_batching.models.embeddings import _packaged_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(_packaged_model_dir()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)  # bert-base sizes
    torch.manual_seed(0)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + "."))
    BertForMaskedLM(config).eval().save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    with contextlib.suppress(OSError):  # another process got there first
        os.rename(staging, target)
    return target


MODELS: dict[str, type[BenchModel]] = {
    cls.name: cls for cls in (NoopModel, SimGpuModel, GpuFastModel, MiniLMModel, BertBaseModel)
}


def build(name: str, device: str = "cpu") -> BenchModel:
    """A loaded bench model; ``name`` is one of :data:`MODELS`."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown bench model {name!r}; choose from {sorted(MODELS)}") from None
    model = cls(device)
    model.load()
    trace.mark_loaded()
    return model
