
w
$550e8400-e29b-41d4-a716-446655440000	agent_123

storage_gbd
	memory_gb
	cpu_cores *2099-03-21T10:30:00Z