"""CPU speed tricks, kept out of the algorithms: oneDNN linears and the fast decoder."""
