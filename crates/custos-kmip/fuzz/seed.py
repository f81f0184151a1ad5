"""Write the fuzz corpus's seeds: KMIP request messages as PyKMIP encodes
them, one per operation Custos carries out. Run with a Python that has
PyKMIP (`.ci/run` makes one): python seed.py corpus/kmip_request
"""
import os
import sys

from kmip.core import attributes as core_attributes
from kmip.core import enums, objects as core_objects, primitives, utils
from kmip.core.factories import attributes as attribute_factory
from kmip.core.messages import contents, messages, payloads

f = attribute_factory.AttributeFactory()
out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)


def message(op, payload, version=enums.KMIPVersion.KMIP_1_2):
    major, minor = {
        enums.KMIPVersion.KMIP_1_2: (1, 2),
        enums.KMIPVersion.KMIP_1_4: (1, 4),
        enums.KMIPVersion.KMIP_2_0: (2, 0),
    }[version]
    header = messages.RequestHeader(
        protocol_version=contents.ProtocolVersion(major, minor),
        batch_count=contents.BatchCount(1))
    item = messages.RequestBatchItem(
        operation=primitives.Enumeration(enums.Operation, op, tag=enums.Tags.OPERATION),
        request_payload=payload)
    m = messages.RequestMessage(request_header=header, batch_items=[item])
    s = utils.BytearrayStream()
    m.write(s, kmip_version=version)
    return s.buffer


uid = "DSET.PRIM.KMIP.key001"
template = core_objects.TemplateAttribute(attributes=[
    f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
    f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
    f.create_attribute(enums.AttributeType.NAME, "seed-key"),
    f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK,
                       [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]),
])
gcm = core_attributes.CryptographicParameters(
    block_cipher_mode=enums.BlockCipherMode.GCM, cryptographic_algorithm=enums.CryptographicAlgorithm.AES)
seeds = {
    "create": (enums.Operation.CREATE, payloads.CreateRequestPayload(
        object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template)),
    "get": (enums.Operation.GET, payloads.GetRequestPayload(unique_identifier=uid)),
    "get_attributes": (enums.Operation.GET_ATTRIBUTES, payloads.GetAttributesRequestPayload(
        unique_identifier=uid, attribute_names=["State", "Name"])),
    "get_attribute_list": (enums.Operation.GET_ATTRIBUTE_LIST,
                           payloads.GetAttributeListRequestPayload(unique_identifier=uid)),
    "locate": (enums.Operation.LOCATE, payloads.LocateRequestPayload(
        maximum_items=10, attributes=[f.create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE)])),
    "activate": (enums.Operation.ACTIVATE, payloads.ActivateRequestPayload(unique_identifier=core_attributes.UniqueIdentifier(uid))),
    "revoke": (enums.Operation.REVOKE, payloads.RevokeRequestPayload(
        unique_identifier=core_attributes.UniqueIdentifier(uid),
        revocation_reason=core_objects.RevocationReason(code=enums.RevocationReasonCode.KEY_COMPROMISE))),
    "destroy": (enums.Operation.DESTROY, payloads.DestroyRequestPayload(unique_identifier=core_attributes.UniqueIdentifier(uid))),
    "query": (enums.Operation.QUERY, payloads.QueryRequestPayload(
        query_functions=[enums.QueryFunction.QUERY_OPERATIONS, enums.QueryFunction.QUERY_OBJECTS])),
    "discover_versions": (enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload()),
    "encrypt": (enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
        unique_identifier=uid, data=b"seed data", cryptographic_parameters=gcm,
        iv_counter_nonce=bytes(12), auth_additional_data=b"aad")),
    "decrypt": (enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
        unique_identifier=uid, data=b"seed data", cryptographic_parameters=gcm,
        iv_counter_nonce=bytes(12), auth_tag=bytes(16))),
    "modify_attribute": (enums.Operation.MODIFY_ATTRIBUTE, payloads.ModifyAttributeRequestPayload(
        unique_identifier=uid, attribute=f.create_attribute(enums.AttributeType.NAME, "renamed"))),
    "delete_attribute": (enums.Operation.DELETE_ATTRIBUTE, payloads.DeleteAttributeRequestPayload(
        unique_identifier=uid, attribute_name="Name", attribute_index=0)),
}
for name, (op, payload) in seeds.items():
    version = enums.KMIPVersion.KMIP_1_4 if name in ("encrypt", "decrypt") else enums.KMIPVersion.KMIP_1_2
    with open(os.path.join(out_dir, name), "wb") as fh:
        fh.write(message(op, payload, version))
print(f"{len(seeds)} seeds in {out_dir}")
