"""Networks between VMs: guest subnets, network records, the per-network switch and the NIC's argv."""
