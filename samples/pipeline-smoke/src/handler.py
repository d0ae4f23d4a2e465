import os


def handler(event, context):
    return {"statusCode": 200, "body": f"release {os.environ.get('RELEASE')}"}
