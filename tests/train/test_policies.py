"""The loop's named policies: when to evaluate, when to save, which weights are the best."""

from __future__ import annotations

from pipeline.train.policies import BestModel, EvalPolicy, Export, SavePolicy, choose_export


def test_evaluation_points_every_n_steps_per_epoch_and_at_the_end() -> None:
    policy = EvalPolicy(every=500)
    assert policy.due(500, new_epoch=False, at_end=False)
    assert not policy.due(501, new_epoch=False, at_end=False)
    assert policy.due(501, new_epoch=True, at_end=False)
    assert policy.due(777, new_epoch=False, at_end=True)
    assert not EvalPolicy(every=0).due(500, new_epoch=False, at_end=False)


def test_saves_periodically_at_the_end_and_every_new_best() -> None:
    with_evals = SavePolicy(every=0)
    assert with_evals.due(7, eval_point=True, new_best=False, at_end=False)
    assert not with_evals.due(7, eval_point=False, new_best=False, at_end=False)
    every = SavePolicy(every=100)
    assert every.due(200, eval_point=False, new_best=False, at_end=False)
    assert not every.due(150, eval_point=True, new_best=False, at_end=False)
    assert every.due(150, eval_point=True, new_best=True, at_end=False), "the best must survive"
    assert every.due(151, eval_point=False, new_best=False, at_end=True)


def test_the_best_is_the_lowest_eval_loss_after_training_began() -> None:
    best = BestModel()
    assert not best.update(0, 0.5), "step 0 scores the starting model"
    assert best.update(10, 3.0) and best.update(20, 2.0)
    assert not best.update(30, 2.5) and not best.update(40, 2.0)
    assert (best.step, best.loss) == (20, 2.0)


def test_the_export_is_the_best_unless_asked_for_the_last_or_nothing_was_evaluated() -> None:
    best = BestModel(loss=2.0, step=40)
    assert choose_export("best", best, 100, 2.5) == Export(
        step=40, eval_loss=2.0, chosen="best eval loss"
    )
    last = Export(step=100, eval_loss=2.5, chosen="last step")
    assert choose_export("last", best, 100, 2.5) == last
    assert choose_export("best", BestModel(), 100, None) == Export(
        step=100, eval_loss=None, chosen="last step"
    )
