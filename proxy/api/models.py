"""GET /v1/models and /v1/models/<id>: the configured model table, in OpenAI's list shape."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..service.errors import ApiError

bp = Blueprint("models", __name__)

OWNER = "google"


def model_object(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": current_app.config["STARTED_AT"], "owned_by": OWNER}


def unknown_model(model_id: str) -> ApiError:
    known = ", ".join(current_app.config["MODELS"])
    return ApiError(404, f"The model `{model_id}` does not exist. Available models: {known}.",
                    code="model_not_found", param="model")


@bp.get("/v1/models")
def list_models():
    """List the models this gateway serves."""
    return jsonify({"object": "list", "data": [model_object(m) for m in current_app.config["MODELS"]]})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    """Describe one model."""
    if model_id not in current_app.config["MODELS"]:
        raise unknown_model(model_id)
    return jsonify(model_object(model_id))
