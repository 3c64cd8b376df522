"""Loss at equal steps over seeds on the loopback: what each default buys, L-GreCo's
frontiers, CO2's outer loop."""
