
node_1	
zonea!
block_1	memory_gb*	exclusive!
block_2	memory_gb*	exclusive!
block_3	memory_gb*	exclusive!
block_4	memory_gb*	exclusive
cpu_1	cpu_cores*	exclusive
cpu_2	cpu_cores*	exclusive
cpu_3	cpu_cores*	exclusive
cpu_4	cpu_cores*	exclusive/
vol_1
storage_gbô"
mediassd*	divisible