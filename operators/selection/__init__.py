"""MATES example selection: data influence models and Gumbel-top-k within domain quotas."""
