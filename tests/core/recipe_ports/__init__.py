"""Small, readable ports of the reference training losses (written from their logic, never copied), run
against the recipes in tests/core/test_train_recipes.py."""
