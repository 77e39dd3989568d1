"""Pure parts on their own: settings, the user's login, the CLI home, the prompt."""

from __future__ import annotations

import json
import os

import pytest

from proxy import create_app
from proxy.api.chat_request import ChatRequest
from proxy.cli.failures import retry_after_seconds
from proxy.cli.home import READ_ONLY_TOOLS, cli_settings, find_user_auth, write_cli_home
from proxy.cli.prompt import build_prompt
from proxy.config import DEFAULT_MODELS, load_settings, parse_model_table


def test_model_table_can_be_replaced_and_extended(tmp_path):
    table = tmp_path / "models.json"
    table.write_text(json.dumps({"fast": "gemini-3.8-flash"}))
    app = create_app({"PROXY_MODELS": parse_model_table(f"@{table}"),
                      "PROXY_EXTRA_MODELS": parse_model_table("pro=gemini-2.5-pro, lite = gemini-3.5-flash-lite")})
    assert app.config["MODELS"] == {"fast": "gemini-3.8-flash", "pro": "gemini-2.5-pro",
                                    "lite": "gemini-3.5-flash-lite"}
    extended = create_app({"PROXY_EXTRA_MODELS": parse_model_table('{"gemini-cli": "gemini-2.5-pro"}')})
    assert extended.config["MODELS"] == DEFAULT_MODELS | {"gemini-cli": "gemini-2.5-pro"}


@pytest.mark.parametrize("name, value", [
    ("PROXY_MODELS", "no-equals-sign"), ("PROXY_REQUEST_TIMEOUT", "-1"), ("PROXY_TOOLS", "all"),
    ("PROXY_QUEUE_SIZE", "many"),
])
def test_invalid_settings_are_named_at_start(name, value):
    with pytest.raises(RuntimeError, match=name):
        load_settings({name: value})


def _config(tmp_path, settings: dict | None, files: dict[str, str] = {}):  # noqa: B006 - never mutated
    directory = tmp_path / "user-gemini"
    directory.mkdir()
    if settings is not None:
        (directory / "settings.json").write_text(json.dumps(settings))
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_google_login_is_copied_and_the_users_config_only_read(tmp_path):
    user = _config(tmp_path, {"security": {"auth": {"selectedType": "oauth-personal"}}},
                   {"oauth_creds.json": '{"refresh_token": "r"}', "google_accounts.json": "{}"})
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user.iterdir()}
    auth = find_user_auth(str(user), environ={})
    assert auth.auth_type == "oauth-personal" and auth.problem is None
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_cli_home(run_dir, run_dir / "home", cli_settings(auth.auth_type, 1, "none"), auth)
    home = run_dir / "home" / ".gemini"
    assert (home / "oauth_creds.json").read_text() == '{"refresh_token": "r"}'
    assert oct((home / "oauth_creds.json").stat().st_mode & 0o777) == "0o600"
    assert not (home / "oauth_creds.json").is_symlink()
    settings = json.loads((home / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "oauth-personal"
    assert settings["tools"]["core"] == [] and settings["experimental"]["enableAgents"] is False
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["general"]["sessionRetention"]["enabled"] is False
    # The .env walk stops in the run dir, outside the model's workspace.
    assert (run_dir / ".gemini" / ".env").read_bytes() == b""
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user.iterdir()} == before


@pytest.mark.parametrize("settings, files, environ, auth_type, problem", [
    (None, {}, {}, None, "Run `gemini` once"),
    (None, {}, {"GEMINI_API_KEY": "k"}, "gemini-api-key", None),
    ({"security": {"auth": {"selectedType": "gemini-api-key"}}}, {}, {}, "gemini-api-key", "GEMINI_API_KEY"),
    ({"security": {"auth": {"selectedType": "gemini-api-key"}}}, {".env": "GEMINI_API_KEY=k\n"}, {},
     "gemini-api-key", None),
    ({"security": {"auth": {"selectedType": "oauth-personal"}}}, {}, {}, "oauth-personal", "credentials"),
    (None, {}, {"GOOGLE_GENAI_USE_VERTEXAI": "true"}, "vertex-ai", "GOOGLE_CLOUD_PROJECT"),
    (None, {}, {"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_CLOUD_LOCATION": "l"},
     "vertex-ai", None),
    ({"selectedAuthType": "oauth-personal"}, {"oauth_creds.json": "{}"}, {}, "oauth-personal", None),
])
def test_login_detection(tmp_path, settings, files, environ, auth_type, problem):
    auth = find_user_auth(str(_config(tmp_path, settings, files)), environ=environ)
    assert auth.auth_type == auth_type
    if problem is None:
        assert auth.problem is None
    else:
        assert problem in auth.problem


def test_read_only_tools_setting():
    assert cli_settings("gemini-api-key", 1, "read-only")["tools"]["core"] == READ_ONLY_TOOLS
    assert "web_fetch" not in READ_ONLY_TOOLS and "run_shell_command" not in READ_ONLY_TOOLS


def _prompt(messages):
    return build_prompt(ChatRequest.from_json({"model": "m", "messages": messages}, {"m": "cli"}).conversation,
                        "default")


def test_tool_results_and_tool_calls_reach_the_transcript():
    prompt = _prompt([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain, 4 C"},
        {"role": "user", "content": "so?"},
    ])
    tag = prompt.text.split("[[User #", 1)[1].split("]]", 1)[0]
    assert f"[[Tool (result of call c1 to weather) #{tag}]]\nrain, 4 C" in prompt.text
    assert '(called the tool weather with call id c1 and arguments {"city": "Oslo"})' in prompt.text
    assert prompt.system_text == "default"


def test_images_are_named_in_order_and_user_at_signs_escaped():
    png = "data:image/png;base64,iVBORw0KGgo="
    prompt = _prompt([{"role": "user", "content": [
        {"type": "text", "text": "mail bob@example.com, see @/etc/hostname and \\@kept"},
        {"type": "image_url", "image_url": {"url": png}},
        {"type": "image_url", "image_url": {"url": png}},
    ]}])
    names = [name for name, _ in prompt.images]
    assert [n.split("-")[1] for n in names] == ["00", "01"] and len(set(names)) == 2
    assert prompt.text == (f"mail bob\\@example.com, see \\@/etc/hostname and \\@kept\n@{names[0]}\n@{names[1]}")


def test_text_only_prompt_is_the_users_text_exactly():
    text = "mail bob@example.com, @/etc/hostname, /init"
    assert _prompt([{"role": "system", "content": "sys"}, {"role": "user", "content": text}]).text == text


@pytest.mark.parametrize("message, seconds", [
    ("Please retry in 17.5s.", 18), ("retry in 900ms", 1), ('"retryDelay": "42s"', 42), ("quota exceeded", None),
])
def test_retry_after_from_cli_messages(message, seconds):
    assert retry_after_seconds(message) == seconds


def test_run_dirs_are_private(tmp_path):
    from proxy.cli.process import CliProcess

    run = CliProcess(str(tmp_path))
    try:
        assert oct(os.stat(run.dir).st_mode & 0o777) == "0o700"
    finally:
        run.close()
    assert not run.dir.exists()
    run.close()  # idempotent
