"""Child script of the DDP test: one rank of ``torchrun --nproc_per_node 2`` fine-tuning on CPU.

``python _ddp_finetune.py DATA MODEL OUT HASHES`` runs ``rnet_hub.finetune`` (2 epochs, batch 4 per
process, 64 px) and writes ``HASHES/rank<RANK>.txt``: the sha256 of this rank's final state dict
(every tensor's bytes in key order), so the test can check that both ranks end with identical weights.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

import rnet_hub


def state_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict's keys and tensor bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    data, model, out, hashes = sys.argv[1:5]
    torch.set_num_threads(1)
    result = rnet_hub.finetune(data, model=model, out_dir=out, epochs=2, batch_size=4, image_size=64, quiet=True)
    rank = os.environ.get("RANK", "0")
    Path(hashes, f"rank{rank}.txt").write_text(f"{state_hash(result.model)} {result.epochs}\n")


if __name__ == "__main__":
    main()
