"""The desk's Models page: the registry's versions and roles, and the candidate's live
comparison with its intervals, counts and the difference the gate judges; for a logged-in
reviewer only."""

import html
import re

import pytest
from comparison_support import stage_night, worse_night
from desk_support import SECRET_KEY, desk_client, logged_in
from model_support import save_scaled_model
from pydantic import SecretStr
from sweep_support import TinyModel, build_settings, postgres_database, save_random_model

from registry import registry

pytestmark = [pytest.mark.services, pytest.mark.model]


@pytest.fixture(scope="module")
def desk(tmp_path_factory, accounts):
    """A desk whose registry has a serving model and a candidate worse on a staged night."""
    home = tmp_path_factory.mktemp("models_page")
    path = home / "serving.pt"
    version, taxonomy = save_random_model(path, seed=1)
    with postgres_database() as url:
        settings = build_settings(
            home / "home",
            url,
            TinyModel(path, version, taxonomy, 0.5),
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr(SECRET_KEY),
        )
        candidate = save_scaled_model(path, home / "candidate.pt", 2.0)
        registry.register(settings, home / "candidate.pt", "ann")
        stage_night(settings, serving=version, candidate=candidate, photos=worse_night())
        yield settings, version, candidate


def test_the_models_page_shows_the_versions_and_the_comparison(desk):
    settings, serving, candidate = desk
    client = logged_in(settings)

    page = client.get("/models")

    assert page.status_code == 200
    text = html.unescape(page.text)
    assert 'href="/models"' in text  # in the header
    versions = text[text.index('id="versions"') : text.index("</table>")]
    assert re.search(rf"<td>{serving}</td>\s*<td>serving</td>", versions)
    assert re.search(rf"<td>{candidate}</td>\s*<td>candidate</td>", versions)
    assert "by ann" in versions
    assert "on the nights since it was registered (1): 320 photos classified" in text
    assert "140 shadowed by the candidate, 120 labelled with both answers" in text
    assert "How the photos were sampled: every photo the serving model flagged" in text
    assert "n=120 stratified" in text  # accuracy, with its interval, count and method
    assert re.search(r"\d+\.\d% \[\d+\.\d-\d+\.\d%\] n=140 hajek", text)  # agreement
    # The 30 photos only the serving model had right are among the 100 flagged of 320.
    assert re.search(
        r"<td>sub</td>.*?<td class=\"num\">30</td>\s*<td class=\"num\">0</td>"
        r"<td class=\"num\">\+9\.4 points</td><td class=\"num\">\+\d+\.\d points</td>",
        text,
        re.S,
    )
    assert "69% blind labels, 31% labels given with the model's answer shown" in text
    assert "would refuse it" in text and "too few blind labels to judge: 20 unflagged" in text
    # Nothing inline for the page's policy to block.
    assert "style=" not in page.text and "<script>" not in page.text
    assert "'self'" in page.headers["Content-Security-Policy"]


def test_the_models_page_needs_a_reviewer(desk):
    settings, _, _ = desk
    response = desk_client(settings).get("/models")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fmodels"
