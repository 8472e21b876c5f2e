"""Native kernels for the frozen model: ternary matmuls on 2-bit packed weights (`ternary`) and
the language-model head on its bfloat16 weight (`head`)."""
