"""ARBooth subject tuning: the method's math as pure functions (losses, layer selection)."""
