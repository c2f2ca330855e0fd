import json

import torch

from tlearn.evaluation import compute_report


def test_report_metrics_match_hand_computation():
    classes = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5
    r = compute_report(logits, labels, classes, "toy")
    assert r.accuracy == 4 / 6
    assert r.top5_accuracy is None  # fewer than 6 classes
    assert r.confusion_matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = r.per_class
    assert a["precision"] == 0.5 and a["recall"] == 0.5
    assert b["precision"] == round(2 / 3, 6) and b["recall"] == 1.0
    assert c["precision"] == 1.0 and c["recall"] == 0.5 and c["f1"] == round(2 / 3, 6)
    assert json.loads(r.to_json())["accuracy"] == r.accuracy
    assert "confusion matrix" in r.summary()


def test_top5_when_more_than_five_classes():
    classes = [str(i) for i in range(7)]
    labels = torch.tensor([6, 6])
    logits = torch.tensor([[6, 5, 4, 3, 2, 1, 0.5], [0, 1, 2, 3, 4, 5, 6.0]])
    r = compute_report(logits, labels, classes, "toy")
    assert r.accuracy == 0.5
    assert r.top5_accuracy == 0.5


def test_averages_and_most_confused_pairs_by_hand():
    classes = ["a", "b", "c"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5
    r = compute_report(logits, labels, classes, "toy")
    recalls = [0.5, 1.0, 0.5]
    assert r.averages["macro"]["recall"] == round(sum(recalls) / 3, 6)
    assert r.averages["weighted"]["recall"] == round((2 * 0.5 + 2 * 1.0 + 4 * 0.5) / 8, 6)
    assert r.most_confused == [
        {"true": "c", "predicted": "a", "count": 2},
        {"true": "a", "predicted": "b", "count": 1},
    ]
    assert set(json.loads(r.to_json())) >= {"averages", "most_confused", "calibration"}
