r"""Synthetic pluralistic environments with known ground truth.

Two environments share one generative story. Prompts :math:`x` belong to latent user groups
:math:`g(x)` whose preferences over :math:`C` aspects differ (a table
:math:`\mathrm{pref}[g, c] \in [0, 1]`). A response :math:`y` carries an aspect row
:math:`q(\cdot\mid y)` on the simplex (one-hot for a hard aspect) and an expected utility
:math:`r(x, y) \in [0, 1]` that depends on the group and the aspect. The human signal is
:math:`u \sim \mathrm{Bernoulli}(r(x, y))` (a binary vote; ``noise="none"`` gives
:math:`u = r`), so :math:`\mathbb E[u\mid x, y] = r(x, y)` and the signal needs no
normalisation (``normalize="none"``). The true value of a policy :math:`\pi` is
(METHOD.md §2)

.. math::

    V_\lambda(\pi) = \mathbb E_x\big[U_\pi(x) + \lambda D_\pi(x)\big],\quad
    U_\pi(x) = \mathbb E_{y\sim\pi(\cdot\mid x)} r(x, y),\quad
    D_\pi(x) = \frac{H(p_\pi(\cdot\mid x))}{\log C},\quad
    p_\pi(c\mid x) = \mathbb E_{y\sim\pi} q(c\mid y),

with :math:`\mathbb E_x` the uniform average over the environment's prompts.

* :class:`CandidateEnv` — response level: each prompt has a finite set of :math:`M` candidate
  responses and policies are softmax distributions over them (:class:`SoftmaxPolicy`). Truths
  are exact, by enumeration. :meth:`CandidateEnv.sample_logs` draws logs of :math:`K_i`
  responses per prompt (i.i.d. from the logging policy, ragged :math:`K_i` allowed) and returns
  a :class:`SyntheticLog` holding the :class:`~pope.data.LoggedFeedback` and able to give the
  log-probabilities of the logged responses under any target policy.
* :class:`TokenEnv` — token level: a tiny causal LM (GPT-2 built from a config, CPU) generates
  token sequences; the aspect and utility of a sequence follow a fixed rule on its tokens
  (each token belongs to a topic; the aspect is the dominant topic). Truths are on-policy Monte
  Carlo estimates reported with their standard errors.

Everything is seeded: the same arguments give bit-identical results. Modules:
:mod:`pope.synthetic.candidates`, :mod:`pope.synthetic.tokens`, :mod:`pope.synthetic.values`
(true values), :mod:`pope.synthetic.sampling` (seeds, ragged K, the signal).
"""

from pope.synthetic.candidates import CandidateEnv, SoftmaxPolicy, SyntheticLog
from pope.synthetic.sampling import SignalNoise
from pope.synthetic.tokens import TokenEnv, TokenLog
from pope.synthetic.values import PolicyValue, entropy

__all__ = [
    "CandidateEnv",
    "PolicyValue",
    "SignalNoise",
    "SoftmaxPolicy",
    "SyntheticLog",
    "TokenEnv",
    "TokenLog",
    "entropy",
]
