"""Run as a script: what `vllm serve --attention-backend MLA_XQA_SM120` does up to the
engine spawn, in a process that starts without mla_plugin loaded.

    python parent_process.py MODEL_DIR OUT_DIR

Writes OUT_DIR/facts.json (what it saw at each step), OUT_DIR/config.pickle (the engine
config, as vLLM pickles it for its spawned engine process) and OUT_DIR/by_value.pickle
(the backend member pickled the way plain Enum members pickle, to show the trap).
"""

import enum
import json
import pickle
import sys
from importlib.metadata import entry_points
from pathlib import Path

model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
facts = {"mla_plugin_loaded_at_start": "mla_plugin" in sys.modules}

from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

facts["member_before_plugins"] = "MLA_XQA_SM120" in AttentionBackendEnum.__members__
facts["entry_points"] = sorted(
    f"{ep.name} = {ep.value}" for ep in entry_points(group="vllm.general_plugins")
)

import vllm.plugins  # noqa: E402

vllm.plugins.load_general_plugins()
facts["member_after_plugins"] = "MLA_XQA_SM120" in AttentionBackendEnum.__members__
member = AttentionBackendEnum["MLA_XQA_SM120"]
backend_cls = member.get_class()
facts["member_class"] = f"{backend_cls.__module__}.{backend_cls.__qualname__}"
facts["member_class_name"] = backend_cls.get_name()
try:
    AttentionBackendEnum["NO_SUCH_BACKEND"]
except ValueError as exc:
    facts["unknown_backend_error"] = str(exc)

from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
args = parser.parse_args([
    "--model", model_dir,
    "--attention-backend", "MLA_XQA_SM120",
    "--load-format", "dummy",
    "--skip-tokenizer-init",
])
facts["parsed_attention_backend"] = str(args.attention_backend)
config = EngineArgs.from_cli_args(args).create_engine_config()
backend = config.attention_config.backend
facts["config_backend_is_member"] = backend is member
facts["config_backend_class"] = f"{backend.get_class().__module__}.{backend.get_class().__qualname__}"
facts["use_mla"] = config.model_config.use_mla
facts["head_size"] = config.model_config.get_head_size()
facts["model_dtype"] = str(config.model_config.dtype)

(out_dir / "config.pickle").write_bytes(pickle.dumps(config))


class _ByValue:
    """Pickles as Enum.__reduce_ex__ would without mla_plugin's override."""

    def __reduce__(self):
        return enum.Enum.__reduce_ex__(member, pickle.HIGHEST_PROTOCOL)


(out_dir / "by_value.pickle").write_bytes(pickle.dumps(_ByValue()))
(out_dir / "facts.json").write_text(json.dumps(facts, indent=1))
