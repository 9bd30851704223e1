"""Independent ports of the reference samplers, one per paper preset, used only by the tests.

Each port is written from its paper and the reference code's logic, structured as the reference is: its
own step loop over the whole canvas calling ``model(x).logits``. They share nothing with ``strategies/``
(no imports from it), so an agreement between a port and a preset is evidence, not a tautology.

Randomness: a port draws its noise through a ``rand(shape)`` callable (default: ``torch.rand``), so a test
can feed it the very stream the strategy consumes, or an unrelated one for a distributional comparison.
"""
