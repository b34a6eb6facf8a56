"""Planning an experiment from the data: fingerprint, rules, throughput budget, the written plan."""
