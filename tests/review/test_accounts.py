"""Reviewer accounts and the desk's secrets, as an operator sets them up: a hash made by the
command, never a plain password in the settings, and no server without a real session key
outside development."""

import logging

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError
from sweep_support import build_settings

from cli import main
from refund_sorter.config import Settings
from refund_sorter.errors import UserError
from refund_sorter.passwords import hash_password, verify_password
from review.auth import authenticate, session_secret

GOOD_KEY = "9c0f7d4e2b1a48d6a3e5c7b9d1f3a5c7"


def test_hash_password_prints_a_hash_of_the_password_typed_twice():
    result = CliRunner().invoke(
        main, ["review-server", "hash-password"], input="a long passphrase\na long passphrase\n"
    )

    assert result.exit_code == 0, result.output
    encoded = result.stdout.strip().splitlines()[-1]
    assert encoded.startswith("scrypt.") and "a long passphrase" not in result.stdout
    assert verify_password("a long passphrase", encoded)
    assert not verify_password("a long passphras", encoded)
    assert Settings(reviewers=f"anna:{encoded}").reviewer_hashes() == {"anna": encoded}


def test_hash_password_refuses_a_short_password():
    result = CliRunner().invoke(main, ["review-server", "hash-password"], input="short\nshort\n")
    assert result.exit_code == 1
    assert "error: choose a password of 10 characters or more" in result.output


def test_the_same_password_hashes_differently_each_time():
    assert hash_password("a long passphrase") != hash_password("a long passphrase")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("anna:her-password", "reviewer 'anna': not a password hash"),
        ("anna", "expected name:hash"),
        (":scrypt.1.1.1.00.00", "expected name:hash"),
        ("anna:scrypt.32768.8.3." + "0" * 32 + "." + "0" * 63, "not a password hash"),
        ("anna:scrypt.1048576.8.1." + "0" * 32 + "." + "0" * 64, "unusable scrypt parameters"),
    ],
)
def test_reviewers_must_be_names_and_hashes(value, message):
    with pytest.raises(ValidationError) as caught:
        Settings(reviewers=value)
    assert message in str(caught.value)


def test_a_reviewer_named_twice_is_refused():
    encoded = hash_password("a long passphrase")
    with pytest.raises(ValidationError, match="reviewer 'anna' is named twice"):
        Settings(reviewers=f"anna:{encoded},anna:{encoded}")


def test_a_wrong_name_costs_a_check_too_and_fails():
    accounts = {"anna": hash_password("a long passphrase")}
    assert authenticate(accounts, "anna", "a long passphrase")
    assert not authenticate(accounts, "anna", "a wrong passphrase")
    assert not authenticate(accounts, "ben", "a long passphrase")


@pytest.mark.parametrize("key", [None, "", "changethis", "short-but-random-7f3a"])
def test_no_session_key_no_desk_outside_development(key):
    settings = Settings(review_secret_key=SecretStr(key) if key is not None else None)
    with pytest.raises(UserError, match="REFUND_SORTER_REVIEW_SECRET_KEY"):
        session_secret(settings)


def test_development_makes_do_with_a_random_key_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        first = session_secret(Settings(environment="development"))
    assert len(first) == 64 and first != session_secret(Settings(environment="development"))
    assert "acceptable in development only" in caplog.text
    assert session_secret(Settings(review_secret_key=SecretStr(GOOD_KEY))) == GOOD_KEY


@pytest.mark.model
def test_the_server_does_not_start_without_reviewers_or_key(
    review_model, use_settings, tmp_path, accounts
):
    settings = build_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'db.sqlite'}", review_model
    )
    use_settings(settings)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0

    def start() -> str:
        result = CliRunner().invoke(main, ["review-server", "--port", "1"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        return result.output

    assert "error: no reviewer can log in: set REFUND_SORTER_REVIEWERS" in start()
    settings.reviewers = SecretStr(accounts)
    use_settings(settings)
    assert "error: REFUND_SORTER_REVIEW_SECRET_KEY is not set" in start()
    settings.review_secret_key = SecretStr(GOOD_KEY)
    settings.model_path = tmp_path / "gone.pt"
    use_settings(settings)
    assert "error: model file not found" in start()
