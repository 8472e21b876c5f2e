"""Native kernels for the frozen model: ternary matmuls on 2-bit packed weights (`ternary`)."""
