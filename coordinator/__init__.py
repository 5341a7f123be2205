"""The thin coordinator: signs allowlists, weighs departures against aggregate load."""
