"""R3MES: turn compute into useful AI work.

Miners fine-tune LoRA adapters on a frozen BitNet b1.58 model, validators re-execute and
attest, proposers merge verified updates, serving nodes answer chat, and a ledger keeps score.
"""

__version__ = "0.1.0"
