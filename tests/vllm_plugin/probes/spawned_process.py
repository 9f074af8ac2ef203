"""Run as a script: a fresh process, like vLLM's spawned engine core, unpickles what
parent_process.py pickled before anything has loaded mla_plugin.

    python spawned_process.py OUT_DIR

Writes OUT_DIR/child_facts.json.
"""

import json
import pickle
import sys
from pathlib import Path

out_dir = Path(sys.argv[1])
facts = {"mla_plugin_loaded_at_start": "mla_plugin" in sys.modules}

# Control: the plain by-value Enum pickle fails here (that is the trap).
try:
    pickle.loads((out_dir / "by_value.pickle").read_bytes())
    facts["by_value_load"] = "loaded"
except Exception as exc:  # what unpickling raises is vLLM's business: record it
    facts["by_value_load"] = f"{type(exc).__name__}: {exc}"
facts["mla_plugin_loaded_before_config"] = "mla_plugin" in sys.modules

config = pickle.loads((out_dir / "config.pickle").read_bytes())
backend = config.attention_config.backend

from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

facts["backend_name"] = backend.name
facts["backend_is_member"] = backend is AttentionBackendEnum["MLA_XQA_SM120"]
backend_cls = backend.get_class()
facts["backend_class"] = f"{backend_cls.__module__}.{backend_cls.__qualname__}"
facts["use_mla"] = config.model_config.use_mla
(out_dir / "child_facts.json").write_text(json.dumps(facts, indent=1))
