"""Features of an SAE: corpus statistics, logit lens, search and labels."""
