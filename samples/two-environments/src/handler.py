import json
import os


def handler(event, context):
    return {
        "statusCode": 200,
        "body": json.dumps(
            {
                "message": f"{os.environ.get('GREETING', 'Hello')} from greeter",
                "environment": os.environ.get("DEPLOY_ENV"),
                "api": os.environ.get("API_BASE_URL"),
            }
        ),
    }
