"""The options several commands share, written once: ``--model``, ``--device``, ``--dtype``, ``--json``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DEVICE_HELP = "auto, cpu, cuda or cuda:N."
DTYPE_HELP = "auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16."
MODEL_DEFAULTS = "$ARBOOTH_MODEL, the last used model, the only cached model, else the embedded toy"

DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)]
#: --model of commands about one subject: its base model unless another is named
SubjectModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Base model (default: the subject's).")]
#: --model of commands that draw prompts
PromptModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help=f"Model name (default: the base model of the prompt's subject, else {MODEL_DEFAULTS}).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]

# gen's speed options (docs/sampling.md); eval samples with them too
SkipScalesOpt = Annotated[Optional[int], typer.Option("--skip-scales", help="Do not sample the last N scales: the image is decoded from the others (faster, less detail; 0: exact, the default).")]
CfgUntilScaleOpt = Annotated[Optional[int], typer.Option("--cfg-until-scale", help="Guidance on the first K scales only; the later ones skip the unconditional pass (faster; default: every scale).")]
PruneOpt = Annotated[Optional[str], typer.Option("--prune", help="SCALE:RATIO,... ('none': off): at each scale (an index, e.g. 9 for 32x32 at 1M), remove that share of the tokens in the middle blocks and refill them from the scale before the first one named (FastVAR; faster, approximate).")]
FastOpt = Annotated[bool, typer.Option("--fast", help="The model's measured speed preset of --skip-scales, --prune and --cfg-until-scale (options given win; docs/sampling.md).")]
