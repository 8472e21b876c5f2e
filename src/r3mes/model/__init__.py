"""r3mes.model: the BitNet b1.58 base model (BitLinear, LoRA, checkpoints, generation).

Import the submodules directly (`from r3mes.model.modeling import BitNetForCausalLM`); this
package file imports nothing so `import r3mes.model` stays cheap.
"""
