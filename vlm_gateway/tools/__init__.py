"""Tool calling: parsing model output into OpenAI tool calls, and planning a request's tool fields.

Rendering tools into prompts lives with the templates (``prompts.render.render_chat(tools=...)``);
the per-family call syntax is data (``ToolFormat`` on ``Family.tools``, from ``families.toml``).
"""

from vlm_gateway.tools.format import ParsedOutput, StreamPiece, ToolFormat
from vlm_gateway.tools.parse import ToolCallStream, call_deltas, parse_tool_calls
from vlm_gateway.tools.plan import ToolPlan, plan_tools

__all__ = [
    "ParsedOutput",
    "StreamPiece",
    "ToolCallStream",
    "ToolFormat",
    "ToolPlan",
    "call_deltas",
    "parse_tool_calls",
    "plan_tools",
]
