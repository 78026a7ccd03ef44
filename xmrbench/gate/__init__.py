"""The regression gate: kernel goldens, learning checks, bit-exact replay."""
