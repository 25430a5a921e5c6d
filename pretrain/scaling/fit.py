"""Fit scaling laws to training runs and derive the compute-optimal model size.

Two of the methods of the Chinchilla paper (Hoffmann et al. 2022, "Training Compute-Optimal
Large Language Models"), done the way Epoch AI's replication did them (Besiroglu et al. 2024,
"Chinchilla Scaling: A replication attempt"):

- Approach 3, `fit_loss_surface`: fit L(N, D) = E + A / N^alpha + B / D^beta to all runs, where
  N is the number of parameters and D the number of training tokens. The best split of a budget
  of C = 6·N·D FLOPs then follows in closed form (`LossSurfaceFit.compute_optimal`), and
  `bootstrap` refits on resampled runs to give percentile intervals.
- Approach 2, `isoflop_minima`: for each compute budget, fit a parabola of loss against log N
  through the runs of that budget, take its minimum, and fit power laws through the minima.

`read_table` reads the runs from a CSV file and `summarize` puts a fit's advice in one sentence.
Only numpy and torch are used: the fit runs a batched L-BFGS written here, one problem per
starting point, all advanced together in float64 tensors.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pretrain.errors import InputError


class ScalingError(InputError, ValueError):
    """Bad scaling-law input (a runs table, runs that cannot be fitted); says what to do."""


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Observations:
    """Training runs: parameters N, training tokens D, final loss, and compute C in FLOPs.

    Each field takes a sequence (one entry per run) and is stored as a float64 array. C defaults
    to 6·N·D, the usual estimate of training FLOPs (2 per parameter and token forward, 4 back).
    """

    N: npt.NDArray[np.float64]
    D: npt.NDArray[np.float64]
    loss: npt.NDArray[np.float64]
    # None: 6·N·D. Always an array once constructed (__post_init__ fills it in).
    C: npt.NDArray[np.float64] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        runs = len(np.atleast_1d(self.N))
        for name in ("N", "D", "loss"):
            self._store(name, getattr(self, name), runs)
        self._store("C", 6 * self.N * self.D if self.C is None else self.C, runs)

    def _store(self, name: str, given: npt.ArrayLike, runs: int) -> None:
        values = np.asarray(given, dtype=np.float64)
        if values.shape != (runs,):
            raise ScalingError(f"Observations: {name} has shape {values.shape} but N has "
                               f"({runs},); give one value per run in each field")
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if len(bad):
            raise ScalingError(f"Observations: {name}[{bad[0]}] = {values[bad[0]]}; sizes, "
                               "tokens, FLOPs and losses must be positive numbers")
        object.__setattr__(self, name, values)  # the dataclass is frozen once built

    def __len__(self) -> int:
        return len(self.N)


# Column names that `read_table` accepts, compared case-insensitively: ours, then those of the
# Epoch AI extraction of the Chinchilla data.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "N": ("N", "params", "Model Size"),
    "D": ("D", "tokens"),
    "C": ("C", "flops", "Training FLOP"),
    "loss": ("loss",),
}


def read_table(path: str | Path, loss_column: str = "loss") -> Observations:
    """Read runs from a CSV file with a header line and one row per run.

    It needs a model-size column, a loss column (`loss_column`, e.g. "loss_ary_Arab" in a table
    from `pretrain scaling collect`), and tokens or compute (see `COLUMN_NAMES`);
    other columns are ignored. With compute only, tokens are D = C / (6 N); with both, C is kept
    as given (it may count more than 6·N·D, attention for instance). Raises `ScalingError`, an
    `InputError`, naming the file, line and column of the first problem.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel writes a BOM
            reader = csv.reader(file)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ScalingError(f"{path}: cannot read the table ({error})") from None
    header = rows[0][1] if rows else []
    columns = _find_columns(path, header, loss_column)
    values: dict[str, list[float]] = {key: [] for key in columns}
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        for key, index in columns.items():
            cell = row[index] if index < len(row) else ""
            values[key].append(_parse_cell(path, line, header[index], cell))
    if not values["N"]:
        raise ScalingError(f"{path}: no data rows; put one row per training run under the header")
    N = np.array(values["N"])
    D = np.array(values["D"]) if "D" in values else np.array(values["C"]) / (6 * N)
    C = np.array(values["C"]) if "C" in values else 6 * N * D
    return Observations(N=N, D=D, loss=np.array(values["loss"]), C=C)


def _find_columns(path: Path, header: Sequence[str], loss_column: str) -> dict[str, int]:
    """Map N, D, C and loss to their column numbers in `header` (D or C may be absent)."""
    folded = [name.strip().casefold() for name in header]
    found: dict[str, int] = {}
    column_names = {**COLUMN_NAMES, "loss": (loss_column,)}
    for key, names in column_names.items():
        hits = [i for i, name in enumerate(folded) if name in {n.casefold() for n in names}]
        if len(hits) > 1:
            clash = ", ".join(repr(header[i]) for i in hits)
            raise ScalingError(f"{path}: columns {clash} all give {key}; keep only one of them")
        if hits:
            found[key] = hits[0]
    listed = ", ".join(repr(name) for name in header) or "none"
    for key, what in (("N", "model size"), ("loss", "loss")):
        if key not in found:
            raise ScalingError(f"{path}: no {what} column; name it {_or(column_names[key])} "
                               f"(columns found: {listed})")
    if "D" not in found and "C" not in found:
        raise ScalingError(f"{path}: no tokens or compute column; add one named "
                           f"{_or(COLUMN_NAMES['D'] + COLUMN_NAMES['C'])} "
                           f"(columns found: {listed})")
    return found


def _or(names: Sequence[str]) -> str:
    return " or ".join(repr(name) for name in names)


def _parse_cell(path: Path, line: int, column: str, cell: str) -> float:
    where = f"{path}, line {line}, column {column!r}"
    if not cell.strip():
        raise ScalingError(f"{where}: empty cell; fill it in or delete the row")
    try:
        value = float(cell)
    except ValueError:
        raise ScalingError(f"{where}: {cell!r} is not a number; fix it or delete the row") from None
    if not (math.isfinite(value) and value > 0):
        raise ScalingError(f"{where}: {cell.strip()} is not a positive number (sizes, tokens, "
                           "FLOPs and losses must be > 0); fix it or delete the row")
    return value


# --------------------------------------------------------------------------------------------
# Approach 3: the parametric loss surface
# --------------------------------------------------------------------------------------------

# Chinchilla's starting points for L-BFGS (as in Epoch AI's replication), in the parameters the
# fit works with: a = log A, b = log B, e = log E, alpha, beta. 6·6·6·5·5 = 5400 starts.
INIT_GRID: dict[str, tuple[float, ...]] = {
    "a": (0, 5, 10, 15, 20, 25),
    "b": (0, 5, 10, 15, 20, 25),
    "e": (-1, -0.5, 0, 0.5, 1, 1.5),
    "alpha": (0, 0.5, 1, 1.5, 2),
    "beta": (0, 0.5, 1, 1.5, 2),
}
# Huber's delta on log-loss residuals: residuals above 0.1% count linearly, not squared, so a
# few odd runs cannot pull the fit.
HUBER_DELTA = 1e-3

# All starts first get a few L-BFGS iterations together; only the best few dozen then run to
# convergence. The ranking after a few iterations is a good guide: on the Chinchilla data and on
# synthetic sets, 30 to 50 of the best 64 after 5 iterations end at the global optimum, the one
# that running all 5400 starts to convergence finds (ten times slower).
_SCREEN_ITERATIONS = 5
_SCREEN_KEEP = 64
# A problem stops when an iteration lowers its objective by less than this, relative.
_FTOL = 1e-10
_MAX_ITERATIONS = 1000
_HISTORY = 10  # L-BFGS curvature pairs kept per problem
_ARMIJO = 1e-4  # sufficient decrease: f(x + t·d) <= f(x) + _ARMIJO·t·(g·d)
_MAX_HALVINGS = 40
# Two optima closer than this in every parameter (a, b, e, alpha, beta) count as one.
_SAME_OPTIMUM = 1e-3


@dataclass(frozen=True)
class LossSurfaceFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, as fitted by `fit_loss_surface`."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # summed Huber loss at the fit: lower is better, on the same runs only

    def predict(self, N: npt.ArrayLike, D: npt.ArrayLike) -> np.ndarray:
        """The predicted final loss of N parameters trained on D tokens."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def a_exp(self) -> float:
        """N_opt grows as C^a_exp."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b_exp(self) -> float:
        """D_opt grows as C^b_exp (a_exp + b_exp = 1)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """N_opt = G·(C/6)^a_exp and D_opt = (C/6)^b_exp / G."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def compute_optimal(self, C: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """The N and D = C / (6 N) that minimise the predicted loss on a budget of C FLOPs.

        On the budget line D = C / (6 N), so dD/dN = -D/N and

            dL/dN = -alpha·A·N^(-alpha-1) + beta·B·D^(-beta) / N,

        which is zero where alpha·A·N^-alpha = beta·B·D^-beta. With D = (C/6) / N this reads
        N^(alpha+beta) = (alpha·A / (beta·B))·(C/6)^beta, so N_opt = G·(C/6)^a_exp and
        D_opt = (C/6) / N_opt = G^-1·(C/6)^b_exp, with G = (alpha·A / (beta·B))^(1/(alpha+beta)),
        a_exp = beta / (alpha+beta) and b_exp = alpha / (alpha+beta). In x = log N the loss is
        E + A·exp(-alpha·x) + B·(C/6)^-beta·exp(beta·x), a sum of convex terms when alpha and
        beta are positive, so this stationary point is the one minimum.
        """
        if not (self.alpha > 0 and self.beta > 0):
            raise ScalingError(f"the fit has alpha={self.alpha:.3g}, beta={self.beta:.3g}: the "
                               "runs do not show loss falling with both N and D, so there is no "
                               "compute-optimal size; add runs that vary N and D more widely")
        n_times_d = np.asarray(C, dtype=float) / 6
        n_opt = self.G * n_times_d**self.a_exp
        return n_opt, n_times_d / n_opt


@dataclass(frozen=True)
class _Objective:
    """Chinchilla's objective and its gradient, for many parameter vectors at once.

    Problem p scores theta[p] = (a, b, e, alpha, beta) on the runs weighted by weights[p] (ones
    for a plain fit, resampling counts for the bootstrap):

        f = sum_i w_i · huber(LSE(a - alpha·log N_i, b - beta·log D_i, e) - log L_i),

    where LSE(x, y, z) = log(e^x + e^y + e^z), so the LSE term is the log of the predicted loss
    A/N^alpha + B/D^beta + E, computed without overflow for any starting point.
    """

    log_n: torch.Tensor  # (runs,)
    log_d: torch.Tensor
    log_loss: torch.Tensor
    weights: torch.Tensor  # (problems, runs), or (1, runs) shared by all problems
    delta: float

    @classmethod
    def of(cls, obs: Observations, delta: float) -> _Objective:
        def log(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.log(values))

        return cls(log(obs.N), log(obs.D), log(obs.loss),
                   torch.ones(1, len(obs), dtype=torch.float64), delta)

    def __call__(self, theta: torch.Tensor,
                 problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objectives (k,) and gradients (k, 5) at `theta` (k, 5) for `problems` (k,)."""
        weights = self.weights if len(self.weights) == 1 else self.weights[problems]
        a, b, e, alpha, beta = theta.T.unsqueeze(-1)  # each (k, 1)
        log_n_term = a - alpha * self.log_n  # log(A / N^alpha), (k, runs)
        log_d_term = b - beta * self.log_d  # log(B / D^beta)
        # LSE with the largest term factored out, so that no exp overflows.
        top = torch.maximum(torch.maximum(log_n_term, log_d_term), e)
        n_part, d_part, e_part = (log_n_term - top).exp(), (log_d_term - top).exp(), (e - top).exp()
        total = n_part + d_part + e_part
        residual = top + total.log() - self.log_loss
        # With c the residual clipped to +-delta, huber(r) = c·(r - c/2) (r²/2 inside, linear
        # outside) and huber'(r) = c.
        clipped = residual.clamp(-self.delta, self.delta)
        value = (weights * clipped * (residual - clipped / 2)).sum(-1)
        # The chain rule by hand (twice as fast as autograd): the derivative of the LSE by each
        # of its terms is that term's share of the total.
        slope = weights * clipped / total
        n_grad, d_grad = slope * n_part, slope * d_part
        grad = torch.stack([n_grad.sum(-1), d_grad.sum(-1), (slope * e_part).sum(-1),
                            -n_grad @ self.log_n, -d_grad @ self.log_d], dim=-1)
        return value, grad


# An L-BFGS curvature pair per problem: the step s, the change of gradient y, and 1 / s·y (0 for a
# pair that is not used). Each (k, 5), (k, 5), (k, 1).
_Pair = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _lbfgs(objective: _Objective, theta: torch.Tensor,
           max_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise problems 0..k-1 from starts `theta` (k, 5); returns final parameters and values.

    One L-BFGS run per problem, all advanced together to share the tensor operations: each
    problem keeps its own curvature history and its own step length, backtracking until the
    Armijo condition holds. A problem stops when an iteration lowers its value by less than
    `_FTOL` relative, when no step lowers it at all, or after `max_iterations`; stopped problems
    leave the batch, so the rest run faster.
    """
    theta = theta.clone()
    final_theta, final_value = theta.clone(), torch.empty(len(theta), dtype=theta.dtype)
    problems = torch.arange(len(theta))
    value, grad = objective(theta, problems)
    pairs: list[_Pair] = []
    # The two-loop recursion starts from scale·identity, scale = s·y / y·y of the newest pair.
    scale = torch.ones_like(value).unsqueeze(-1)
    for iteration in range(max_iterations):
        direction = _direction(grad, pairs, scale)
        slope = (direction * grad).sum(-1)
        uphill = slope >= 0  # a stale history can point uphill; steepest descent cannot
        direction[uphill] = -grad[uphill]
        slope = (direction * grad).sum(-1)
        # As torch's L-BFGS does: the first step, along -grad, is at most 1 long in L1 norm.
        step = (1 / grad.abs().sum(-1)).clamp(max=1) if iteration == 0 else torch.ones_like(value)
        new_theta, new_value, new_grad, moved = _backtrack(
            objective, problems, theta, value, grad, direction, slope, step)
        s, y = new_theta - theta, new_grad - grad
        sy = (s * y).sum(-1, keepdim=True)
        # A pair without positive curvature would make the Hessian estimate indefinite: skip it
        # (its weight 0 makes it a no-op in `_direction`).
        curved = sy > 1e-10 * s.norm(dim=-1, keepdim=True) * y.norm(dim=-1, keepdim=True)
        pairs = [*pairs, (s, y, torch.where(curved, 1 / sy, 0.0))][-_HISTORY:]
        scale = torch.where(curved, sy / (y * y).sum(-1, keepdim=True), scale)
        stopped = ~moved | (value - new_value <= _FTOL * new_value.abs())
        theta, value, grad = new_theta, new_value, new_grad
        final_theta[problems[stopped]], final_value[problems[stopped]] = (
            theta[stopped], value[stopped])
        going = ~stopped
        if not going.any():
            break
        problems, theta, value, grad, scale = (
            problems[going], theta[going], value[going], grad[going], scale[going])
        pairs = [(s[going], y[going], rho[going]) for s, y, rho in pairs]
    else:
        final_theta[problems], final_value[problems] = theta, value
    return final_theta, final_value


def _direction(grad: torch.Tensor, pairs: Sequence[_Pair], scale: torch.Tensor) -> torch.Tensor:
    """-H·grad, H the L-BFGS estimate of the inverse Hessian (the two-loop recursion)."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s * q).sum(-1, keepdim=True)
        q -= alpha * y
        alphas.append(alpha)
    q *= scale
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        q += (alpha - rho * (y * q).sum(-1, keepdim=True)) * s
    return -q


def _backtrack(objective: _Objective, problems: torch.Tensor, theta: torch.Tensor,
               value: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor,
               slope: torch.Tensor, step: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halve each problem's step until theta + step·direction passes the Armijo test.

    Returns the new parameters, values, gradients, and which problems moved (the others, whose
    step shrank to nothing, keep their old values).
    """
    new_theta, new_value, new_grad = theta.clone(), value.clone(), grad.clone()
    moved = torch.zeros(len(theta), dtype=torch.bool)
    trying = torch.arange(len(theta))
    for _ in range(_MAX_HALVINGS):
        trial = theta[trying] + step[trying, None] * direction[trying]
        trial_value, trial_grad = objective(trial, problems[trying])
        ok = trial_value <= value[trying] + _ARMIJO * step[trying] * slope[trying]  # False: NaN
        done = trying[ok]
        new_theta[done], new_value[done] = trial[ok], trial_value[ok]
        new_grad[done] = trial_grad[ok]
        moved[done] = True
        trying = trying[~ok]
        if not len(trying):
            break
        step[trying] /= 2
    return new_theta, new_value, new_grad, moved


def _grid_starts(grid: Mapping[str, Sequence[float]]) -> torch.Tensor:
    names = ("a", "b", "e", "alpha", "beta")
    if set(grid) != set(names):
        raise ValueError(f"the initialisation grid needs the keys {names}, got {tuple(grid)}")
    return torch.tensor(list(itertools.product(*(grid[name] for name in names))),
                        dtype=torch.float64)


def _search(objective: _Objective, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise from all starts; returns the optima of the most promising ones, best first.

    The objective must be shared by all problems (one row of weights): the second stage
    renumbers them.
    """
    theta, value = _lbfgs(objective, starts, _SCREEN_ITERATIONS)
    promising = torch.argsort(value)[:_SCREEN_KEEP]
    theta, value = _lbfgs(objective, theta[promising], _MAX_ITERATIONS)
    order = torch.argsort(value)
    return theta[order], value[order]


def _to_fit(theta: torch.Tensor, value: float) -> LossSurfaceFit:
    a, b, e, alpha, beta = theta.tolist()
    return LossSurfaceFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                          objective=value)


def _check_enough(obs: Observations) -> None:
    """Refuse runs that cannot determine the 5 parameters at all."""
    if len(obs) < 5 or len(np.unique(obs.N)) < 2 or len(np.unique(obs.D)) < 2:
        raise ScalingError(f"{len(obs)} runs with {len(np.unique(obs.N))} distinct model sizes "
                           f"and {len(np.unique(obs.D))} distinct token counts; the loss surface "
                           "has 5 parameters and needs at least 5 runs and 2 of each")


def fit_loss_surface(obs: Observations, *, grid: Mapping[str, Sequence[float]] = INIT_GRID,
                     delta: float = HUBER_DELTA) -> LossSurfaceFit:
    """Chinchilla's Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to the runs.

    Minimises the summed Huber loss of log(predicted) - log(observed) loss (see `_Objective`)
    by L-BFGS from every point of `grid` and keeps the best. To finish in seconds, all starts
    run together as one batch (`_lbfgs`) for a few iterations, and only the `_SCREEN_KEEP` best
    of them continue to convergence.
    """
    _check_enough(obs)
    objective = _Objective.of(obs, delta)
    candidates, values = _search(objective, _grid_starts(grid))
    return _to_fit(candidates[0], float(values[0]))


# --------------------------------------------------------------------------------------------
# Bootstrap intervals for Approach 3
# --------------------------------------------------------------------------------------------

PARAMETERS = ("E", "A", "B", "alpha", "beta", "a_exp", "b_exp")
AT_BUDGET = ("N_opt", "D_opt", "loss_opt")


@dataclass(frozen=True)
class BootstrapResult:
    """The full-data fit and one refit per resample of the runs, for percentile intervals."""

    point: LossSurfaceFit
    fits: tuple[LossSurfaceFit, ...]

    def values(self, name: str, budget: float | None = None) -> np.ndarray:
        """`name` (one of `PARAMETERS`, or of `AT_BUDGET` with a budget in FLOPs) per resample.

        For `AT_BUDGET`, raises `ScalingError` when a refit has no compute-optimal size (a
        non-positive exponent): then the runs do not pin the allocation down at all.
        """
        if name in PARAMETERS and budget is None:
            return np.array([getattr(fit, name) for fit in self.fits])
        if name in AT_BUDGET and budget is not None:
            allocations = [fit.compute_optimal(budget) for fit in self.fits]
            if name == "loss_opt":
                return np.array([fit.predict(n, d) for fit, (n, d) in
                                 zip(self.fits, allocations, strict=True)])
            return np.array([n if name == "N_opt" else d for n, d in allocations])
        raise ValueError(f"unknown quantity {name!r} (budget={budget}); give one of {PARAMETERS} "
                         f"without a budget, or of {AT_BUDGET} with one")

    def interval(self, name: str, budget: float | None = None,
                 level: float = 0.9) -> tuple[float, float]:
        """The central `level` percentile interval of `name` (0.9: from 5% to 95%)."""
        low, high = np.percentile(self.values(name, budget), [50 * (1 - level), 50 * (1 + level)])
        return float(low), float(high)


def bootstrap(obs: Observations, n_resamples: int = 200, seed: int = 0, *, n_starts: int = 4,
              grid: Mapping[str, Sequence[float]] = INIT_GRID,
              delta: float = HUBER_DELTA) -> BootstrapResult:
    """Fit the runs, then refit on `n_resamples` resamples drawn with replacement.

    Deterministic for a given seed. Each refit does not search the whole grid: it starts from
    the full-data optimum and from the next best distinct optima that the full-data search found
    (`n_starts` in all), and keeps the best. A resample is a weighting of the runs (each run
    counted as often as it was drawn), so all refits run together as one batch.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _check_enough(obs)
    objective = _Objective.of(obs, delta)
    candidates, values = _search(objective, _grid_starts(grid))
    starts = [candidates[0]]
    for theta in candidates[1:]:
        if len(starts) < n_starts and all((theta - s).abs().max() > _SAME_OPTIMUM for s in starts):
            starts.append(theta)
    counts = np.random.default_rng(seed).multinomial(
        len(obs), np.full(len(obs), 1 / len(obs)), size=n_resamples)
    # Problem r·len(starts) + k refits resample r from start k.
    resampled = dataclasses.replace(
        objective, weights=torch.from_numpy(np.repeat(counts, len(starts), axis=0)).double())
    theta, value = _lbfgs(resampled, torch.stack(starts).repeat(n_resamples, 1), _MAX_ITERATIONS)
    theta, value = theta.view(n_resamples, len(starts), 5), value.view(n_resamples, len(starts))
    winner = value.argmin(dim=1)
    fits = tuple(_to_fit(theta[r, k], float(value[r, k])) for r, k in enumerate(winner.tolist()))
    return BootstrapResult(point=_to_fit(candidates[0], float(values[0])), fits=fits)


# --------------------------------------------------------------------------------------------
# Approach 2: minima of IsoFLOP curves
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoflopMinimum:
    """The loss-minimising model size on one compute budget (one IsoFLOP curve)."""

    C: float  # the budget: geometric mean of its runs' C
    N: float  # where the parabola of loss against log N is lowest
    D: float  # C / (6 N)
    loss: float  # the parabola's value there
    runs: int
    extrapolated: bool  # N lies outside the sizes trained on this budget: trust it less


@dataclass(frozen=True)
class IsoflopFit:
    """Power laws through IsoFLOP minima: N*(C) = n_coef·C^a and D*(C) = d_coef·C^b.

    Since every D* is C / (6 N*), b = 1 - a and d_coef = 1 / (6 n_coef) up to rounding.
    """

    minima: tuple[IsoflopMinimum, ...]
    skipped: tuple[str, ...]  # one line per budget left out, saying why
    a: float
    b: float
    n_coef: float
    d_coef: float
    # (a, b) through the minima that lie within their budget's sizes, when some do not and at
    # least 2 do: how much the extrapolated ones move the exponents.
    without_extrapolated: tuple[float, float] | None = None

    @property
    def extrapolated(self) -> tuple[IsoflopMinimum, ...]:
        return tuple(minimum for minimum in self.minima if minimum.extrapolated)

    def compute_optimal(self, C: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """N*(C) and D*(C) from the power laws."""
        C = np.asarray(C, dtype=float)
        return self.n_coef * C**self.a, self.d_coef * C**self.b


def isoflop_minima(obs: Observations, *, rtol: float = 0.05) -> IsoflopFit:
    """Chinchilla's Approach 2: minimum of each IsoFLOP curve, then power laws through them.

    Runs whose C agree within `rtol` (relative to the smallest C of the group) share a budget.
    A budget with fewer than 3 distinct model sizes, or whose parabola of loss against log N
    opens downwards, is skipped and listed in `skipped`. Both power laws are least-squares
    lines in log-log space.
    """
    order = np.argsort(obs.C)
    groups: list[list[int]] = []
    for i in order:
        if groups and obs.C[i] <= obs.C[groups[-1][0]] * (1 + rtol):
            groups[-1].append(i)
        else:
            groups.append([i])
    minima, skipped = [], []
    for group in groups:
        budget = float(np.exp(np.log(obs.C[group]).mean()))
        sizes = np.unique(obs.N[group])
        if len(sizes) < 3:
            skipped.append(f"C={budget:.3g}: {len(sizes)} distinct model size(s); a parabola "
                           "needs at least 3")
            continue
        log_n = np.log(obs.N[group])
        center = log_n.mean()  # fit around the middle for a well-conditioned least squares
        curvature, slope, constant = np.polyfit(log_n - center, obs.loss[group], 2)
        if curvature <= 0:
            skipped.append(f"C={budget:.3g}: the parabola through its {len(group)} runs opens "
                           "downwards, so it has no minimum; train sizes on both sides of the "
                           "best one")
            continue
        vertex = -slope / (2 * curvature)
        n_opt = float(np.exp(center + vertex))
        minima.append(IsoflopMinimum(
            C=budget, N=n_opt, D=budget / (6 * n_opt),
            loss=float(constant - slope**2 / (4 * curvature)), runs=len(group),
            extrapolated=not sizes[0] <= n_opt <= sizes[-1]))
    if len(minima) < 2:
        reasons = "; ".join(skipped) or "all runs share one budget"
        raise ScalingError(f"{len(minima)} compute budget(s) with a minimum; power laws need at "
                           f"least 2 ({reasons})")
    (a, log_n_coef), (b, log_d_coef) = _power_laws(minima)
    inside = [m for m in minima if not m.extrapolated]
    without = None
    if len(inside) < len(minima) and len(inside) >= 2:
        (a_in, _), (b_in, _) = _power_laws(inside)
        without = (float(a_in), float(b_in))
    return IsoflopFit(minima=tuple(minima), skipped=tuple(skipped), a=float(a), b=float(b),
                      n_coef=math.exp(log_n_coef), d_coef=math.exp(log_d_coef),
                      without_extrapolated=without)


def _power_laws(minima: Sequence[IsoflopMinimum]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines of log N* and log D* against log C: (slope, intercept) each."""
    log_c = np.log([m.C for m in minima])
    return (np.polyfit(log_c, np.log([m.N for m in minima]), 1),
            np.polyfit(log_c, np.log([m.D for m in minima]), 1))


# --------------------------------------------------------------------------------------------
# In words
# --------------------------------------------------------------------------------------------


def summarize(fit: LossSurfaceFit, budget: float, intervals: BootstrapResult | None = None,
              level: float = 0.9) -> str:
    """What the fit advises for `budget` FLOPs, in one sentence (with intervals when given)."""
    n_opt, d_opt = fit.compute_optimal(budget)
    loss = fit.predict(n_opt, d_opt)

    def show(value: float | npt.NDArray[np.float64], name: str, fmt: str) -> str:
        text = format(float(value), fmt)
        if intervals is not None:
            low, high = intervals.interval(name, budget, level)
            text += f" ({level:.0%} interval {low:{fmt}} to {high:{fmt}})"
        return text

    return (f"For {budget:.3g} FLOPs train N={show(n_opt, 'N_opt', '.3g')} parameters on "
            f"D={show(d_opt, 'D_opt', '.3g')} tokens ({float(d_opt / n_opt):.3g} tokens per "
            f"parameter); predicted loss {show(loss, 'loss_opt', '.4f')}.")
